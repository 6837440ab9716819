"""From files on disk to stored verdicts: the step the HTTP service and the DICOM receiver share.

``Processor.process_folder`` resolves the study's acquisition guideline, runs
:func:`scanqc.pipeline.check_path` (the one code path, the same as ``scanqc check``), writes the verdict,
its checks, timings and queries to the store *before* anyone is told, then notifies listeners (metrics,
the in-process console wake-up). Consoles in other processes see the row through their SSE poll.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanqc.serving.config import Settings
from scanqc.serving.store import ScannerRegistry, Store

from scanqc.cancel import CancelToken, cancel_scope
from scanqc.checks.base import Check, CheckContext, InferFn
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.guideline import Guideline, load_guideline, parse_guideline, shipped_guideline_path
from scanqc.io.dicom import acquisition_datetime, valid_uid
from scanqc.limits import Limits
from scanqc.pipeline import apply_required_series, check_path, check_series, default_checks
from scanqc.series import Series
from scanqc.verdict import CheckResult, Verdict

log = logging.getLogger("scanqc.serving")

SOURCES = ("http", "dicom")


@dataclass
class Processed:
    """What listeners get for each stored verdict."""

    verdict: Verdict
    verdict_id: int
    site_id: str
    station: str
    source: str
    study_id: str | None
    received_at: dt.datetime
    verdict_at: dt.datetime


Listener = Callable[[Processed], None]


class _HeaderTap:
    """Wraps the first check to keep each series' header (patient identifiers, acquisition time).

    The pipeline's verdict deliberately carries no patient data; the store needs a keyed hash of it, so we
    read it from the very Series the pipeline assembled instead of parsing the files a second time.
    """

    def __init__(self, inner: Check, sink: dict[str, Series]) -> None:
        self.inner = inner
        self.name = inner.name
        self.sink = sink

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        self.sink[series.series_uid or series.input] = series
        return self.inner(series, ctx)


def _dicom_datetime(series: Series | None) -> dt.datetime | None:
    """Acquisition time from the header (``scanqc.io.dicom.acquisition_datetime``)."""
    return acquisition_datetime(series)


class Processor:
    """Runs the pipeline for one received input and records the outcome. Thread-safe."""

    def __init__(self, settings: Settings, store: Store, *, infer: InferFn | None = None, models: Any = None,
                 limits: Limits | None = None, checks: Sequence[Check] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.infer = infer
        self.models = models
        self.limits = limits or (settings.limits() if hasattr(settings, "limits") else Limits.from_env())
        self.checks = list(checks) if checks is not None else None
        self.listeners: list[Listener] = []
        self._guidelines: dict[str, Guideline] = {}
        self._managed_cache: dict[str, tuple[Any, Guideline]] = {}
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = dict.fromkeys(SOURCES, 0)

    def in_flight(self, source: str | None = None) -> int:
        """Inputs being checked right now, of one source or all (the queue-depth gauge)."""
        return self._in_flight[source] if source else sum(self._in_flight.values())

    # -- guidelines ------------------------------------------------------------------------------
    def guideline_for(self, study_id: str | None) -> Guideline | None:
        """The acquisition guideline of a study (cached); ``None`` when no study applies.

        A study is one of the settings file's ``studies``, one set through the admin API, or the name of a
        guideline shipped with scanqc; any other id (a file path included: ids arrive in requests) raises
        ScanQCError(BAD_GUIDELINE), as does an invalid guideline.
        """
        if not study_id:
            return None
        if study_id not in self.settings.studies:
            managed = self._managed(study_id)
            if managed is not None:
                return managed
        ref = self.settings.guideline_ref(study_id)
        if ref is None:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE,
                              f"study {study_id[:64]!r} is not configured (settings 'studies', or "
                              "PUT /api/admin/studies/{id})")
        with self._lock:
            g = self._guidelines.get(ref)
        if g is None:
            # The settings file's entries may be paths (the operator's); a shipped name loads from the package.
            g = load_guideline(ref if study_id in self.settings.studies else shipped_guideline_path(ref) or ref)
            with self._lock:
                self._guidelines[ref] = g
            try:
                self.store.upsert_study(study_id or g.study, ref, g.title or None, g.raw)
            except Exception:  # the guideline record is informative; never block a verdict on it
                log.warning("could not record guideline for study %s", study_id, exc_info=True)
        return g

    def _managed(self, study_id: str) -> Guideline | None:
        """A guideline set through the admin API (kept in the store; re-read when it changes)."""
        try:
            row = self.store.managed_guideline(study_id)
        except Exception:
            return None
        if row is None:
            return None
        updated, raw = row
        key = f"api:{study_id}"
        with self._lock:
            hit = self._managed_cache.get(key)
        if hit is not None and hit[0] == updated:
            return hit[1]
        g = parse_guideline(raw, f"study {study_id}")
        with self._lock:
            self._managed_cache[key] = (updated, g)
        return g

    def forget_guideline(self, study_id: str) -> None:
        with self._lock:
            self._managed_cache.pop(f"api:{study_id}", None)

    def study_for(self, site: str, study_id: str | None) -> str | None:
        """Request's study, else the site's (settings, then the admin API's site record), else the default."""
        if study_id or site in self.settings.site_studies:
            return self.settings.study_for(site, study_id)
        try:
            managed = self.store.site_study(site)
        except Exception:
            managed = None
        return managed or self.settings.study_for(site, None)

    def resolve(self, site_id: str | None, study_id: str | None) -> tuple[str, str | None, Guideline | None]:
        """(site, study, guideline) for an input; raises ScanQCError for an unknown study."""
        site = site_id or self.settings.default_site
        study = self.study_for(site, study_id)
        return site, study, self.guideline_for(study)

    # -- the one entry point ---------------------------------------------------------------------
    def process_folder(self, folder: Path | str, *, site_id: str | None, station: str, source: str,
                       received_at: dt.datetime, study_id: str | None = None, visit: str | None = None,
                       modality_hint: str | None = None, complete_study: bool = False,
                       cancel: CancelToken | None = None) -> list[Verdict]:
        """Check every series under ``folder`` (a folder, file, zip or NIfTI) and store the verdicts.

        Never raises for bad input: an unreadable input or a study with a broken guideline becomes an
        ``error`` verdict, stored like any other so the technologist console shows it.
        ``complete_study`` adds the study-level ``required_series`` check (only meaningful when the input
        holds a whole visit; series arriving one by one over DICOM would otherwise all be "missing" the rest).
        ``cancel`` stops the check (an error verdict ``CHECK_TIMEOUT`` is stored) once it is cancelled.
        """
        return [v for v, _ in self.check_folder(
            folder, site_id=site_id, station=station, source=source, received_at=received_at, study_id=study_id,
            visit=visit, modality_hint=modality_hint, complete_study=complete_study, cancel=cancel)]

    def check_folder(self, folder: Path | str, *, site_id: str | None, station: str, source: str,
                     received_at: dt.datetime, study_id: str | None = None, visit: str | None = None,
                     modality_hint: str | None = None, complete_study: bool = False,
                     cancel: CancelToken | None = None) -> list[tuple[Verdict, int | None]]:
        """:meth:`process_folder` with each verdict's stored id (None where storing failed)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=dt.timezone.utc)
        site = site_id or self.settings.default_site
        study = self.study_for(site, study_id)
        with self._lock:
            self._in_flight[source] += 1
        try:
            try:
                guideline = self.guideline_for(study)
            except ScanQCError as exc:
                verdicts = [Verdict.from_error(str(folder), exc.code.value, exc.message)]
            else:
                taps: dict[str, Series] = {}
                checks = self.checks if self.checks is not None else default_checks()
                tapped: list[Check] = [_HeaderTap(checks[0], taps), *checks[1:]] if checks else []
                with cancel_scope(cancel):
                    verdicts = check_path(folder, guideline, limits=self.limits, modality_hint=modality_hint,
                                          visit=visit, models=self.models, infer=self.infer, checks=tapped,
                                          station=station, scanners=ScannerRegistry(self.store))
                verdicts = [_checked_uids(v) for v in verdicts]
                if complete_study:
                    apply_required_series(verdicts, guideline, visit, taps)
                for tapped_series in taps.values():
                    self._write_preview(tapped_series, site)
                return self._record(verdicts, taps, site=site, station=station, source=source, study=study,
                                    received_at=received_at)
            return self._record(verdicts, {}, site=site, station=station, source=source, study=study,
                                received_at=received_at)
        finally:
            with self._lock:
                self._in_flight[source] -= 1

    def record_error(self, folder: Path | str, code: str, message: str, *, site_id: str | None, station: str,
                     source: str, received_at: dt.datetime, study_id: str | None = None
                     ) -> list[tuple[Verdict, int | None]]:
        """Store an error verdict for an input that is not checked (a quarantined upload), like any other."""
        site = site_id or self.settings.default_site
        return self._record([Verdict.from_error(str(folder), code, message)], {}, site=site, station=station,
                            source=source, study=study_id, received_at=received_at)

    def process_series(self, series: Series, *, site_id: str | None, stations: Sequence[str], source: str,
                       received_at: dt.datetime, arrival: Any = None) -> list[Processed]:
        """Check a series assembled on arrival (no file is read again) and store one verdict per station.

        ``arrival`` (``scanqc.ingest.tracker.SeriesArrival``) says which signal completed the series, whether
        the verdict is final, and which earlier verdicts it replaces; a provisional verdict overtaken by new
        instances while it was being checked (``arrival.is_current()`` false) is not stored. Never raises
        for bad input (as :meth:`process_folder`).
        """
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=dt.timezone.utc)
        site = site_id or self.settings.default_site
        study = self.study_for(site, None)
        final = bool(getattr(arrival, "final", True))
        with self._lock:
            self._in_flight[source] += 1
        try:
            t0 = time.perf_counter()
            try:
                guideline = self.guideline_for(study)
            except ScanQCError as exc:
                verdict = Verdict.from_error(series.input, exc.code.value, exc.message,
                                             series_uid=series.series_uid, modality=series.modality)
            else:
                checks = self.checks if self.checks is not None else default_checks()
                # elapsed_ms = time after the last instance: stacking the volume (not the decoding, done as
                # instances arrived) plus the checks.
                started = t0 - float(series.timings_ms.get("assemble", 0.0)) / 1000
                verdict = check_series(series, guideline, models=self.models, infer=self.infer, checks=checks,
                                       started=started)
            verdict.final = final
            if arrival is not None:
                n_new = int(getattr(arrival, "n_new", 0) or 0)
                verdict.completion = {"completed_by": arrival.completed_by, "final": final, "updated_with": n_new,
                                      "replaces": list(arrival.replaces), "stations": list(stations)}
                if arrival.replaces and n_new:
                    verdict.notes.insert(0, f"updated: {n_new} more image{'s' if n_new != 1 else ''}")
                if not arrival.is_current():
                    log.info("series %s: provisional verdict overtaken by new instances; not shown",
                             series.series_uid)
                    return []
            # Everything this verdict replaces: what the tracker knows, plus whatever the store still shows
            # for the series at this site (a provisional verdict from before a restart, an older final one).
            replaces = list(getattr(arrival, "replaces", ()) or ())
            try:
                replaces += [i for i in self.store.live_verdict_ids(site, series.series_uid, series.study_uid)
                             if i not in replaces]
            except Exception:
                log.warning("series %s: earlier verdicts not looked up", series.series_uid, exc_info=True)
            self._write_preview(series, site)
            out: list[Processed] = []
            for i, station in enumerate(dict.fromkeys(stations) or [""]):
                # One row per station that sent the series, so each console shows it; queries once.
                out += self._record_one(verdict, series, site=site, station=station, source=source, study=study,
                                        received_at=received_at, final=final, open_queries=final and i == 0,
                                        replaces=replaces if i == 0 else [])
            return out
        finally:
            with self._lock:
                self._in_flight[source] -= 1

    def process_header(self, series: Series, *, site_id: str | None, stations: Sequence[str], source: str,
                       received_at: dt.datetime, arrival: Any = None) -> list[Processed]:
        """The header checks (protocol, de-identification, visit window) of a series' first instance, stored
        as a provisional verdict so the console shows them while the rest arrives; the series' own verdict
        replaces it. The model and integrity checks say they wait for the series."""
        from scanqc.pipeline import HEADER_CHECKS, MODEL_CHECKS

        site = site_id or self.settings.default_site
        study = self.study_for(site, None)
        try:
            guideline = self.guideline_for(study)
        except ScanQCError:
            return []  # the series' own verdict reports it
        header_checks = [c for c in HEADER_CHECKS if c.name != "integrity"]
        verdict = check_series(series, guideline, models=self.models, infer=self.infer, checks=header_checks)
        waiting = CheckResult.skipped("waiting for the rest of the series")
        for c in [*(c for c in HEADER_CHECKS if c.name == "integrity"), *MODEL_CHECKS]:
            verdict.checks[c.name] = waiting
        verdict.final = False
        verdict.completion = {"completed_by": "first_instance", "final": False, "updated_with": 0, "replaces": [],
                              "stations": list(stations)}
        verdict.notes.insert(0, "receiving: header checks of the first image; the images are checked when the "
                                "series is complete")
        out: list[Processed] = []
        for station in dict.fromkeys(stations) or [""]:
            out += self._record_one(verdict, series, site=site, station=station, source=source, study=study,
                                    received_at=received_at, final=False, open_queries=False, replaces=[])
        return out

    def _write_preview(self, series: Series, site: str) -> None:
        """The console's mid-slice preview of the series (best effort: never costs a verdict)."""
        if series.volume is None:
            return
        try:
            from scanqc.serving.preview import preview_path, preview_png

            path = preview_path(self.settings.data_dir, site, series.study_uid, series.series_uid)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(preview_png(series.volume, series.modality))
            os.replace(tmp, path)
        except Exception:
            log.warning("series %s: preview not written", series.series_uid, exc_info=True)

    def finalize(self, verdict_ids: Sequence[int], *, completed_by: str) -> list[Verdict]:
        """Mark provisional verdicts final (nothing arrived since): opens their queries, tells listeners."""
        try:
            rows = self.store.finalize_verdicts(list(verdict_ids), completed_by=completed_by)
        except Exception as exc:
            log.error("finalizing verdicts %s failed: %s", list(verdict_ids), type(exc).__name__)
            raise
        out: list[Verdict] = []
        now = dt.datetime.now(dt.timezone.utc)
        for rec in rows:
            v = Verdict.from_dict(rec["verdict"])
            out.append(v)
            received = dt.datetime.fromisoformat(rec["received_at"]) if rec.get("received_at") else now
            if received.tzinfo is None:
                received = received.replace(tzinfo=dt.timezone.utc)
            event = Processed(v, rec["id"], rec["site_id"], rec["station"], rec["source"], rec.get("study_id"),
                              received, now)
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:
                    log.warning("verdict listener failed", exc_info=True)
        return out

    def _record_one(self, v: Verdict, series: Series | None, *, site: str, station: str, source: str,
                    study: str | None, received_at: dt.datetime, final: bool, open_queries: bool,
                    replaces: list[int]) -> list[Processed]:
        try:
            vid = self._save(v, series, site=site, station=station, source=source, study=study,
                             received_at=received_at, open_queries=open_queries, final=final, replaces=replaces)
        except Exception as exc:
            log.error("storing verdict for series %s failed: %s", v.series_uid, type(exc).__name__)
            raise  # the tracker retries, then leaves the series for the next start
        return [self._notify(v, vid, site, station, source, study, received_at)]

    def _save(self, v: Verdict, series: Series | None, *, site: str, station: str, source: str,
              study: str | None, received_at: dt.datetime, **kw: Any) -> int:
        """Store one verdict with the identifiers hashed as configured (the one place that does)."""
        patient = accession = None
        if series is not None:
            patient = series.get("PatientID") or series.get("PatientName")
            accession = series.get("AccessionNumber")
        return self.store.save_verdict(
            v, site_id=site, station=station, source=source, received_at=received_at,
            acquired_at=_dicom_datetime(series), study_id=study,
            patient_hash=self.settings.hash_identifier(patient),
            accession_hash=self.settings.hash_identifier(accession), **kw)

    def _notify(self, v: Verdict, vid: int, site: str, station: str, source: str, study: str | None,
                received_at: dt.datetime) -> Processed:
        """Tell the listeners (console, SSE) about a stored verdict; a failing listener costs nothing else."""
        event = Processed(v, vid, site, station, source, study, received_at, dt.datetime.now(dt.timezone.utc))
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.warning("verdict listener failed", exc_info=True)
        return event

    def _record(self, verdicts: list[Verdict], taps: dict[str, Series], *, site: str, station: str,
                source: str, study: str | None, received_at: dt.datetime) -> list[tuple[Verdict, int | None]]:
        out: list[tuple[Verdict, int | None]] = []
        for v in verdicts:
            series = taps.get(v.series_uid or v.input)
            try:
                vid = self._save(v, series, site=site, station=station, source=source, study=study,
                                 received_at=received_at)
            except Exception as exc:
                # Storage down: the verdict is still the scanner's answer; say so in it rather than hide it.
                log.error("storing verdict for series %s failed: %s", v.series_uid, type(exc).__name__)
                v.notes.append(f"{ErrorCode.INTERNAL.value}: verdict not stored ({type(exc).__name__})")
                out.append((v, None))
                continue
            out.append((v, vid))
            self._notify(v, vid, site, station, source, study, received_at)
        return out


def _checked_uids(v: Verdict) -> Verdict:
    """A series whose SeriesInstanceUID is not a DICOM UID gets an error verdict without it: the UID names
    the series in URLs, file names and the SR download's Content-Disposition (issue 15: ``1.2.3"; filename=
    "evil.exe`` was stored and sent back as a header parameter). An invalid StudyInstanceUID is dropped."""
    if v.study_uid is not None and valid_uid(v.study_uid) is None:
        v.study_uid = None
        v.notes.append("StudyInstanceUID is not a valid DICOM UID; not recorded")
    if v.series_uid is None or valid_uid(v.series_uid) == v.series_uid:
        return v
    return Verdict.from_error(v.input, ErrorCode.BAD_UID.value,
                              "SeriesInstanceUID is not a valid DICOM UID (digits and dots, at most 64 "
                              "characters); fix the export and resend", v.elapsed_ms, modality=v.modality,
                              study_uid=v.study_uid, n_instances=v.n_instances, notes=v.notes)
