"""Pending series, keyed by (site, study, series), each with its own assembler; completion runs here.

A :class:`SeriesTracker` is what a front end (the DICOM receiver, a watched folder) drives::

    tracker = SeriesTracker(policy, on_check, on_finalize=..., on_final=...).start()
    tracker.add(key, sop, ds, file, station="CT1", folder=folder, assoc=assoc_id)  # per instance
    tracker.released(assoc_id)                                  # the sender released its association
    tracker.mpps_completed(site, {series_uid: sops_or_None}, studies)
    tracker.stop()

``on_check(folder, arrival)`` is called (in a worker thread) when a completion signal fires; ``arrival``
(:class:`SeriesArrival`) carries the assembled ``series``, which signal decided, whether the verdict is
``final``, the verdict ids it ``replaces`` and the ``stations`` to tell. It returns the stored verdict ids
(ints; anything else is taken as "no ids"). ``on_finalize(folder, arrival)`` confirms a provisional verdict
without re-checking (``arrival.replaces`` = the ids). ``on_final(folder, files)`` runs once a series' final
verdict is stored (the receiver writes its ``.verdict`` marker there).

Every instance given to ``add`` ends in exactly one final verdict: a series is forgotten only after a final
verdict that covered all of its instances was stored; an instance arriving during a check re-opens it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from scanqc.errors import ScanQCError
from scanqc.ingest.assembler import SeriesAssembler, StackState
from scanqc.ingest.completion import GAP_WINDOW, CompletionPolicy, Decision, Progress, decide, expected_frames
from scanqc.io.dicom import non_image_reason, read_file
from scanqc.io.sources import InputFile
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.preprocessing import InplanePass
from scanqc.series import Series

log = logging.getLogger("scanqc.ingest")

SeriesKey = tuple[str, str, str]  # (site, StudyInstanceUID, SeriesInstanceUID)
DONE_MEMORY = 512  # finished series remembered, so a late instance's verdict says what it adds and replaces


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class SeriesArrival:
    """What the completion callback learns about a series besides its folder."""

    site_id: str
    station: str  # calling AE title of the first association that sent the series
    study_uid: str
    series_uid: str
    first_received: dt.datetime  # UTC
    last_received: dt.datetime  # UTC
    n_instances: int  # instances in the series when completion fired
    completed_by: str  # a scanqc.ingest.completion.Signal
    final: bool = True
    stations: tuple[str, ...] = ()  # every station that sent instances of it (first = ``station``)
    n_new: int = 0  # instances not covered by the verdict this one replaces (0 for a first verdict)
    replaces: tuple[int, ...] = ()  # verdict ids this verdict replaces (or, for on_finalize, confirms)
    series: Series | None = field(default=None, compare=False, repr=False)  # assembled on arrival
    is_current: Callable[[], bool] = field(default=lambda: True, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("series", "is_current")}
        d["first_received"] = self.first_received.isoformat()
        d["last_received"] = self.last_received.isoformat()
        d["stations"] = list(self.stations)
        d["replaces"] = list(self.replaces)
        return d


OnCheck = Callable[[Path, SeriesArrival], Any]


@dataclass
class _Pending:
    key: SeriesKey
    folder: Path | None
    first: dt.datetime
    last: dt.datetime
    last_mono: float
    stations: list[str] = field(default_factory=list)
    sops: set[str] = field(default_factory=set)
    other: set[str] = field(default_factory=set)  # instances that are no image: in no volume, still covered
    assembler: SeriesAssembler | None = None
    reload: bool = False  # earlier instances are on disk only: assemble from the folder at check time
    lock: threading.Lock = field(default_factory=threading.Lock)  # the assembler's (arrivals vs finish)
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAP_WINDOW))
    stack: StackState | None = None
    expected: int | None = None
    n_frames: int = 0
    assoc: Hashable | None = None
    assoc_count: int = 0
    released: bool = False
    mpps_final: bool = False
    mpps_sops: set[str] | None = None
    recovered: bool = False
    # verdict state
    checked_sops: set[str] | None = None  # instances covered by the last stored verdict
    checked_stations: int = 0
    verdict_ids: list[int] = field(default_factory=list)
    in_flight: bool = False
    first_shown: bool = False  # the header checks of the first instance went out
    attempts: int = 0
    not_before: float = 0.0

    def changed(self) -> bool:
        """Anything a stored verdict has not seen: a new instance, or a new station to tell."""
        return (self.checked_sops is None or not self.sops <= self.checked_sops
                or len(self.stations) > self.checked_stations)

    def progress(self, station_gaps: deque[float] | None) -> Progress:
        gaps = self.gaps if len(self.gaps) >= 3 or not station_gaps else station_gaps
        return Progress(self.last_mono, self.n_frames, self.expected, self.stack, gaps, self.released,
                        self.assoc_count, self.mpps_final, self.mpps_sops, self.sops, self.recovered)


def _dcm_files(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in it if e.name.endswith(".dcm") and not e.name.startswith(".") and e.is_file()]


def _input_name(key: SeriesKey, folder: Path | None) -> str:
    """What the verdict's ``input`` names: the folder the instances are kept in (as for a checked folder)."""
    return str(folder) if folder is not None else f"series {key[2]}"


def assemble_folder(folder: Path, limits: Limits = DEFAULT_LIMITS,
                    into: SeriesAssembler | None = None) -> tuple[SeriesAssembler, set[str]]:
    """Feed every instance file of one series folder (``<SOPInstanceUID>.dcm``) to an assembler (a restart,
    a late instance). Returns it and the instances that are no image (unreadable, or e.g. an SR)."""
    asm = into or SeriesAssembler(str(folder), limits)
    other: set[str] = set()
    for e in sorted(_dcm_files(folder), key=lambda e: e.name):
        sop = e.name[:-4]
        try:
            ds = read_file(Path(e.path), e.name)
            if non_image_reason(ds):
                other.add(sop)
                continue
        except ScanQCError:
            other.add(sop)  # acknowledged but unreadable: the series is checked without it
            continue
        asm.add(ds, InputFile(Path(e.path), e.path), sop=sop)
    return asm, other


class SeriesTracker:
    """Thread-safe tracker of pending series; owns the completion loop and the check workers."""

    def __init__(self, policy: CompletionPolicy, on_check: OnCheck, *,
                 on_finalize: OnCheck | None = None, on_final: Callable[[Path, dict[str, int]], Any] | None = None,
                 on_provisional: Callable[[Path, list[int]], Any] | None = None,
                 on_first: OnCheck | None = None,
                 limits: Limits = DEFAULT_LIMITS, workers: int = 1, retries: int = 2,
                 retry_delay_s: float = 5.0, max_instances: int = 5000,
                 inplane: dict[str, tuple[InplanePass, ...]] | None = None) -> None:
        self.policy = policy
        self.inplane = inplane  # the models' in-plane grids: each slice is resampled onto them on arrival
        self.on_check = on_check
        self.on_finalize = on_finalize
        self.on_final = on_final
        self.on_provisional = on_provisional
        self.on_first = on_first
        self.limits = limits
        self.workers = max(1, workers)
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.max_instances = max_instances
        self._lock = threading.Lock()
        self._pending: dict[SeriesKey, _Pending] = {}
        self._mpps_waiting: dict[tuple[str, str], set[str]] = {}  # (site, series) -> SOPs, series not arrived
        self._station_gaps: dict[str, deque[float]] = {}
        self._station_last: dict[str, float] = {}
        self._done: dict[SeriesKey, tuple[frozenset[str], tuple[int, ...]]] = {}  # recent final verdicts
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.completed = 0  # final verdicts stored
        self.checks = 0  # on_check calls that returned

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> SeriesTracker:
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="scanqc-series")
        self._thread = threading.Thread(target=self._loop, name="scanqc-series-tracker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pending_keys(self) -> list[SeriesKey]:
        with self._lock:
            return list(self._pending)

    # -- arrivals --------------------------------------------------------------------------------
    def would_overflow(self, key: SeriesKey, sop: str) -> bool:
        """True when one more instance would exceed ``max_instances`` for the series."""
        with self._lock:
            p = self._pending.get(key)
            return p is not None and sop not in p.sops and len(p.sops) >= self.max_instances

    def add(self, key: SeriesKey, sop: str, ds: Dataset | None, file: InputFile | Path | str | None, *,
            station: str, folder: Path | None = None, assoc: Hashable | None = None) -> None:
        """One instance of ``key`` has arrived (already stored durably). ``ds`` with pixels, or None."""
        now, mono = _now(), time.monotonic()
        with self._lock:
            p = self._pending.get(key)
            if p is None:
                reload = folder is not None and len(_dcm_files(folder)) > 1
                p = self._pending[key] = _Pending(key, folder, now, now, mono, reload=reload,
                                                  mpps_sops=self._mpps_waiting.pop((key[0], key[2]), None))
                done = self._done.pop(key, None)
                if done is not None and reload:  # re-opened after its final verdict: the next one replaces it
                    p.checked_sops, p.verdict_ids = set(done[0]), list(done[1])
                p.mpps_final = p.mpps_sops is not None
                if not reload:
                    p.assembler = SeriesAssembler(_input_name(key, folder), self.limits, inplane=self.inplane)
                log.info("series %s (study %s, site %s) started from %s", key[2], key[1], key[0], station)
            else:
                gap = mono - p.last_mono
                p.gaps.append(gap)
            last_station = self._station_last.get(station)
            if last_station is not None and mono - last_station < self.policy.quiet_period_s:
                self._station_gaps.setdefault(station, deque(maxlen=GAP_WINDOW)).append(mono - last_station)
            self._station_last[station] = mono
            if station not in p.stations:
                p.stations.append(station)
            p.sops.add(sop)
            p.last, p.last_mono = now, mono
            if assoc != p.assoc or assoc is None:
                p.assoc, p.assoc_count = assoc, 0
            p.assoc_count += 1
            p.released = False
            asm = p.assembler
        if ds is None:
            with self._lock:
                p.other.add(sop)  # not an image (or unreadable): covered by the series' verdict as it is
        elif asm is not None:
            with p.lock:  # decode outside the tracker lock: other series keep flowing
                asm.add(ds, file, sop=sop)
                stack, n_frames = asm.stack(), asm.n_frames
                expected = expected_frames(asm) if self._may_expect(asm) else None
            with self._lock:
                p.stack, p.n_frames, p.expected = stack, n_frames, expected
                first = (self.on_first is not None and not p.first_shown and asm.header is not None
                         and asm.error is None and p.checked_sops is None and not p.in_flight)
                if first:
                    p.first_shown = p.in_flight = True  # the real check waits until this one is stored
            if first and self._pool is not None:
                self._pool.submit(self._run, p, "first", Decision("first_instance", False))
        self._wake.set()

    @staticmethod
    def _may_expect(asm: SeriesAssembler) -> bool:
        h = asm.header
        return h is not None and any(k in h for k in ("NumberOfFrames", "ImagesInAcquisition",
                                                       "NumberOfTemporalPositions"))

    def released(self, assoc: Hashable) -> None:
        """The association ``assoc`` was released: a completion signal for what it delivered last."""
        with self._lock:
            for p in self._pending.values():
                if p.assoc == assoc:
                    p.released = True
        self._wake.set()

    def mpps_completed(self, site: str, series_refs: dict[str, set[str] | None], studies: set[str]) -> None:
        """An MPPS COMPLETED/DISCONTINUED from ``site``: only that site's series are affected."""
        with self._lock:
            if series_refs:
                for s, sops in series_refs.items():
                    hits = [p for k, p in self._pending.items() if k[0] == site and k[2] == s]
                    for p in hits:
                        p.mpps_final, p.mpps_sops = True, sops
                    if not hits and sops:  # images still on their way: complete once all have arrived
                        self._mpps_waiting[(site, s)] = sops
            else:
                for k, p in self._pending.items():
                    if k[0] == site and k[1] in studies:
                        p.mpps_final = True
        self._wake.set()

    def recover(self, key: SeriesKey, folder: Path, sops: set[str], station: str, first: dt.datetime,
                last: dt.datetime, provisional_ids: list[int] | None = None) -> None:
        """A series found on disk without a final verdict: checked after a full quiet period; its
        provisional verdict from before the restart (``provisional_ids``) is replaced by that check."""
        with self._lock:
            self._pending[key] = _Pending(key, folder, first, last, time.monotonic(), [station] if station else [],
                                          set(sops), reload=True, recovered=True,
                                          verdict_ids=list(provisional_ids or []))

    # -- completion ------------------------------------------------------------------------------
    def _job(self, p: _Pending, mono: float) -> tuple[str, Decision] | None:
        prog = p.progress(self._station_gaps.get(p.stations[0]) if p.stations else None)
        if p.changed():
            d = decide(prog, mono, self.policy)
            return ("check", d) if d else None
        d = decide(prog, mono, CompletionPolicy(self.policy.quiet_period_s, adaptive=False))
        return ("finalize", d) if d else None

    def _loop(self) -> None:
        tick = min(0.05, max(0.01, self.policy.quiet_period_s / 20))
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            mono = time.monotonic()
            jobs: list[tuple[_Pending, str, Decision]] = []
            with self._lock:
                for p in self._pending.values():
                    if p.in_flight or mono < p.not_before:
                        continue
                    job = self._job(p, mono)
                    if job is not None:
                        p.in_flight = True
                        jobs.append((p, *job))
            for p, kind, d in jobs:
                assert self._pool is not None
                self._pool.submit(self._run, p, kind, d)

    def _arrival(self, p: _Pending, d: Decision, n: int, series: Series | None,
                 is_current: Callable[[], bool] = lambda: True, new: int = 0) -> SeriesArrival:
        site, study, uid = p.key
        stations = tuple(p.stations)
        return SeriesArrival(site, stations[0] if stations else "", study, uid, p.first, p.last, n, d.signal,
                             d.final, stations, new, tuple(p.verdict_ids), series, is_current)

    def _run(self, p: _Pending, kind: str, d: Decision) -> None:
        try:
            if kind == "check":
                self._check(p, d)
            elif kind == "first":
                self._first(p, d)
            else:
                self._finalize(p, d)
        except Exception:
            if kind == "first":  # only a preview of the header checks: the series' own check follows
                log.warning("series %s: first-instance header checks not shown", p.key[2], exc_info=True)
                return
            log.exception("series %s: completion callback failed (attempt %d)", p.key[2], p.attempts + 1)
            with self._lock:
                if p.attempts < self.retries and not self._stop.is_set():
                    p.attempts += 1
                    p.not_before = time.monotonic() + self.retry_delay_s * p.attempts
                    p.last_mono = 0.0  # due again once the back-off ends
                else:  # no marker: the next start picks it up again
                    self._pending.pop(p.key, None)
        finally:
            with self._lock:
                p.in_flight = False
            self._wake.set()

    def _check(self, p: _Pending, d: Decision) -> None:
        files = {e.name: e.stat().st_mtime_ns for e in _dcm_files(p.folder)} if p.folder else {}
        t0 = time.perf_counter()
        with p.lock:
            with self._lock:
                reload, p.reload = p.reload, False
                if reload or p.assembler is None:
                    p.assembler = SeriesAssembler(_input_name(p.key, p.folder), self.limits,
                                                  inplane=self.inplane)
                asm = p.assembler
            other: set[str] = set()
            if reload and p.folder is not None:
                _, other = assemble_folder(p.folder, self.limits, into=asm)
            try:
                series = asm.finish()
            except ScanQCError as exc:  # nothing but non-image objects (an SR, a key object...): say so
                series = Series(input=_input_name(p.key, p.folder), series_uid=p.key[2], modality=None,
                                volume=None, source="dicom", n_instances=0, error=exc)
            in_series = asm.sop_uids  # exactly what this verdict sees (an instance may be on its way in)
        with self._lock:
            p.other |= other
            snapshot = in_series | p.other
            p.sops |= snapshot  # what was on disk only
            n_stations = len(p.stations)
            new = len(snapshot - p.checked_sops) if p.checked_sops is not None else 0

        def is_current() -> bool:
            # A provisional verdict overtaken by a new instance is not worth showing: a new check follows.
            with self._lock:
                return d.final or (p.sops <= snapshot and len(p.stations) == n_stations)

        log.info("series %s complete (%s, %s, %d instances); checking", p.key[2], d.signal,
                 "final" if d.final else "provisional", len(snapshot))
        result = self.on_check(p.folder or Path(), self._arrival(p, d, len(snapshot), series, is_current, new))
        ids = [int(x) for x in result if isinstance(x, int)] if isinstance(result, (list, tuple)) else []
        log.info("series %s verdict stored in %.0f ms", p.key[2], (time.perf_counter() - t0) * 1000)
        current = is_current()  # takes the lock itself
        with self._lock:
            self.checks += 1
            p.attempts = 0
            if ids or d.final or current:
                p.checked_sops, p.checked_stations = snapshot, n_stations
                if ids:
                    p.verdict_ids = ids
            done = d.final and not p.changed()
            if done:
                self._forget(p)
        if done and self.on_final is not None and p.folder is not None and p.folder.is_dir():
            self.on_final(p.folder, files)
        elif not d.final and ids and self.on_provisional is not None and p.folder is not None:
            self.on_provisional(p.folder, ids)

    def _first(self, p: _Pending, d: Decision) -> None:
        """Header checks on the first instance, shown at once (a provisional verdict the real one replaces)."""
        asm = p.assembler
        if asm is None or asm.header is None or self.on_first is None:
            return
        with p.lock:
            header = asm.header
        series = Series(input=_input_name(p.key, p.folder), series_uid=p.key[2],
                        modality=str(header.get("Modality", "")) or None, volume=None, source="dicom",
                        header=header, headers=[header], n_instances=1)
        with self._lock:
            arrival = self._arrival(p, d, len(p.sops), series)
        result = self.on_first(p.folder or Path(), arrival)
        ids = [int(x) for x in result if isinstance(x, int)] if isinstance(result, (list, tuple)) else []
        with self._lock:
            keep = bool(ids) and not p.verdict_ids
            if keep:
                p.verdict_ids = ids
        if keep and self.on_provisional is not None and p.folder is not None:
            self.on_provisional(p.folder, ids)

    def _forget(self, p: _Pending) -> None:
        """Final verdict stored for everything: drop the series (and its volume); remember what it covered."""
        self._pending.pop(p.key, None)
        self.completed += 1
        self._done[p.key] = (frozenset(p.checked_sops or p.sops), tuple(p.verdict_ids))
        while len(self._done) > DONE_MEMORY:
            self._done.pop(next(iter(self._done)))

    def _finalize(self, p: _Pending, d: Decision) -> None:
        files = {e.name: e.stat().st_mtime_ns for e in _dcm_files(p.folder)} if p.folder else {}
        with self._lock:
            arrival = self._arrival(p, d, len(p.sops), None)
        if self.on_finalize is not None and arrival.replaces:
            self.on_finalize(p.folder or Path(), arrival)
        log.info("series %s: provisional verdict confirmed (%s)", p.key[2], d.signal)
        with self._lock:
            done = not p.changed()
            if done:
                self._forget(p)
        if done and self.on_final is not None and p.folder is not None and p.folder.is_dir():
            self.on_final(p.folder, files)
