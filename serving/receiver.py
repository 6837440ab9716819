"""DICOM receiver: a pynetdicom storage SCP that turns pushed series into verdicts.

Scanners C-STORE instances; each one is written durably (temp file, fsync, atomic rename, directory
fsync) to ``<data_dir>/incoming/<site>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` *before* the
success status goes back, so nothing acknowledged can be lost; the same dataset is then decoded into the
series' assembler (:mod:`scanqc.ingest`), so a complete series needs only its model checks. Pending series
are keyed by (site, study, series). When a completion signal fires (:mod:`scanqc.ingest.completion`: MPPS
from the sender's site, expected count, geometry, association release, adaptive or configured quiet
period) ``on_series_complete(folder, meta)`` runs with the assembled ``meta.series``; provisional verdicts
are confirmed through ``on_series_final`` or replaced. After the final verdict a ``.verdict`` marker lists
the files it saw. On start, series folders whose files are not all covered by a marker are queued again.

Logs carry UIDs and AE titles only, never patient attributes. See docs/dicom.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    ModalityPerformedProcedureStep,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from scanqc.ingest.completion import CompletionPolicy
from scanqc.ingest.tracker import SeriesArrival, SeriesKey, SeriesTracker
from scanqc.io.dicom import non_image_reason
from scanqc.io.durable import atomic_write, fsync_dir

__all__ = ["Receiver", "ReceiverConfig", "SeriesArrival", "make_receiver", "run_receiver"]

log = logging.getLogger("scanqc.receiver")

STORAGE_CLASSES = [
    CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage, EnhancedMRImageStorage, EnhancedMRColorImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, MultiFrameTrueColorSecondaryCaptureImageStorage,
]
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, RLELossless,
]

# DIMSE statuses (PS3.4 Annex B / F).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # transient: the modality should retry
CANNOT_UNDERSTAND = 0xC000  # permanent: retrying the same object will not help
NO_SUCH_OBJECT = 0x0112
DUPLICATE_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
INVALID_VALUE = 0x0106

MARKER = ".verdict"
ARRIVAL = ".arrival.json"
PROVISIONAL = ".provisional.json"  # ids of the provisional verdict shown, until the final one
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_FINAL_MPPS = ("COMPLETED", "DISCONTINUED")
_MAX_MPPS = 1000  # open MPPS instances kept in memory; oldest dropped first


def _valid_uid(v: object) -> str | None:
    s = str(v or "").strip()
    return s if len(s) <= 64 and _UID.match(s) else None


def _safe_name(s: str) -> str:
    """A site id as a single path component (site ids come from config, but never trust a path)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", s.strip()) or "_"
    return "_" + out if out.startswith(".") else out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ReceiverConfig:
    """What the receiver needs; build it from the service's Settings with :meth:`from_settings`."""

    data_dir: Path
    port: int = 11112
    ae_title: str = "SCANQC"
    quiet_period_s: float = 5.0
    ae_sites: Mapping[str, str] = field(default_factory=dict)  # calling AE title -> site id
    host: str = "0.0.0.0"
    # Accept calling AEs missing from ae_sites (filed under default_site). Default: only when
    # ae_sites is empty, i.e. the demo config; a configured deployment rejects strangers.
    accept_unknown_ae: bool | None = None
    default_site: str = "default"
    tcp_nodelay: bool = True  # TCP_NODELAY on accepted sockets + TCP_QUICKACK after each PDU (Linux)
    max_pdu: int = 0  # 0 = unlimited: fewer, larger P-DATA PDUs from the sender
    workers: int = 1  # series checked concurrently
    retries: int = 2  # extra attempts when on_series_complete raises
    retry_delay_s: float = 5.0
    sr_destination: str | None = None  # "AE@host:port": C-STORE the verdict SR there (off by default)
    max_instances: int = 5000  # per series: more are refused (bounded disk and tracker memory)
    adaptive: bool = True  # provisional verdicts from the fast signals (release, geometry, adaptive quiet)
    min_quiet_s: float = 0.2  # the adaptive quiet period's floor

    def policy(self) -> CompletionPolicy:
        return CompletionPolicy(self.quiet_period_s, adaptive=self.adaptive, min_quiet_s=self.min_quiet_s)

    @property
    def accepts_any(self) -> bool:
        return (not self.ae_sites) if self.accept_unknown_ae is None else self.accept_unknown_ae

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ReceiverConfig:
        """Map ``scanqc.serving.config.Settings`` (or anything with the same attribute names)."""
        if isinstance(settings, ReceiverConfig):
            return cls(**{**settings.__dict__, **overrides})
        kw: dict[str, Any] = dict(
            data_dir=Path(settings.data_dir), port=int(settings.dicom_port),
            ae_title=str(settings.dicom_ae_title), quiet_period_s=float(settings.quiet_period_s),
            ae_sites=dict(getattr(settings, "ae_sites", {}) or {}),
        )
        for attr, name in (("dicom_host", "host"), ("dicom_accept_unknown_ae", "accept_unknown_ae"),
                           ("default_site", "default_site"), ("dicom_tcp_nodelay", "tcp_nodelay"),
                           ("dicom_workers", "workers"), ("dicom_sr_destination", "sr_destination"),
                           ("max_instances", "max_instances"), ("dicom_adaptive", "adaptive"),
                           ("dicom_min_quiet_s", "min_quiet_s")):
            if getattr(settings, attr, None) is not None:
                kw[name] = getattr(settings, attr)
        kw.update(overrides)
        return cls(**kw)


OnSeriesComplete = Callable[[Path, SeriesArrival], Any]

# ---------------------------------------------------------------------------------------------
# Durable writes


# fsync_dir / atomic_write live in scanqc.io.durable (shared with the service and the unit outbox);
# imported above, so scanqc.serving.receiver.atomic_write keeps working.


def _dcm_files(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in it if e.name.endswith(".dcm") and not e.name.startswith(".") and e.is_file()]


class Receiver:
    """Storage/Verification/MPPS SCP in front of a :class:`SeriesTracker`. ``start()`` returns; ``serve()`` blocks.

    ``on_series_complete(folder, meta)`` checks a series (``meta.series`` is assembled, ``meta.final`` says
    whether a later instance is still expected) and returns the stored verdict ids; ``on_series_final(folder,
    meta)`` confirms the provisional verdicts ``meta.replaces`` without a re-check.
    """

    def __init__(self, settings: Any, on_series_complete: OnSeriesComplete,
                 on_series_final: OnSeriesComplete | None = None, on_first_instance: OnSeriesComplete | None = None,
                 inplane: dict[str, tuple[tuple[int, int], ...]] | None = None, **overrides: Any) -> None:
        self.cfg = ReceiverConfig.from_settings(settings, **overrides)
        self.on_series_complete = on_series_complete
        self.incoming = Path(self.cfg.data_dir) / "incoming"
        self._lock = threading.Lock()
        self._mpps: OrderedDict[str, tuple[str, Dataset]] = OrderedDict()  # uid -> (creating site, dataset)
        self._known_dirs: set[Path] = set()
        self._stop = threading.Event()
        self._server: Any = None
        self.tracker = SeriesTracker(self.cfg.policy(), on_series_complete, on_finalize=on_series_final,
                                     on_final=_on_final, on_provisional=_on_provisional,
                                     on_first=on_first_instance if self.cfg.adaptive else None,
                                     workers=self.cfg.workers, retries=self.cfg.retries,
                                     retry_delay_s=self.cfg.retry_delay_s, max_instances=self.cfg.max_instances,
                                     inplane=inplane)

    @property
    def completed(self) -> int:
        """Series whose final verdict is stored, for health pages."""
        return self.tracker.completed

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0`` in tests)."""
        return int(self._server.server_address[1]) if self._server else self.cfg.port

    def start(self) -> Receiver:
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._recover()
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_pdu_size = self.cfg.max_pdu
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        plain = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.add_supported_context(Verification, plain)
        ae.add_supported_context(ModalityPerformedProcedureStep, plain)
        if not self.cfg.accepts_any:
            # Others get A-ASSOCIATE-RJ (permanent, "calling AE title not recognised").
            ae.require_calling_aet = list(self.cfg.ae_sites)
        handlers = [(evt.EVT_C_STORE, self._on_c_store), (evt.EVT_N_CREATE, self._on_n_create),
                    (evt.EVT_N_SET, self._on_n_set), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_RELEASED, self._on_released)]
        if self.cfg.tcp_nodelay:
            handlers.append((evt.EVT_CONN_OPEN, _set_nodelay))
            if hasattr(socket, "TCP_QUICKACK"):
                handlers.append((evt.EVT_PDU_RECV, _quickack))
        self._stop.clear()
        self.tracker.start()
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        log.info("DICOM receiver %s listening on %s:%d (accept unknown AEs: %s, quiet period %.1fs, adaptive %s)",
                 self.cfg.ae_title, self.cfg.host, self.port, self.cfg.accepts_any, self.cfg.quiet_period_s,
                 self.cfg.adaptive)
        return self

    def serve(self) -> None:
        """Start if needed and block until :meth:`stop` (from another thread or a signal handler)."""
        if self._server is None:
            self.start()
        self._stop.wait()

    def request_stop(self) -> None:
        """Make :meth:`serve` return (safe from signal handlers); the caller then calls :meth:`stop`."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let running checks finish; unfinished series stay on disk for the next start."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()  # closes the listener and aborts open associations
            self._server = None
        self.tracker.stop(timeout)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- association events --------------------------------------------------------------------

    def _site_for(self, calling_ae: str) -> str:
        site = self.cfg.ae_sites.get(calling_ae.strip())
        return _safe_name(site if site is not None else self.cfg.default_site)

    def _on_accepted(self, event: evt.Event) -> None:
        log.info("association accepted from %s", event.assoc.requestor.ae_title)

    def _on_rejected(self, event: evt.Event) -> None:
        log.warning("association rejected from %s (calling AE not in ae_sites?)",
                    event.assoc.requestor.ae_title)

    def _on_released(self, event: evt.Event) -> None:
        self.tracker.released(id(event.assoc))

    def _on_c_store(self, event: evt.Event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            sop = _valid_uid(ds.get("SOPInstanceUID") or event.request.AffectedSOPInstanceUID)
            study = _valid_uid(ds.get("StudyInstanceUID"))
            series = _valid_uid(ds.get("SeriesInstanceUID"))
        except Exception as exc:  # undecodable dataset: permanent failure
            log.warning("C-STORE from %s: cannot decode dataset (%s)", calling, type(exc).__name__)
            return CANNOT_UNDERSTAND
        if not (sop and study and series):
            log.warning("C-STORE from %s: missing or invalid Study/Series/SOP Instance UID", calling)
            return CANNOT_UNDERSTAND
        site = self._site_for(calling)
        key: SeriesKey = (site, study, series)
        folder = self.incoming / site / study / series
        if self.tracker.would_overflow(key, sop):
            log.warning("C-STORE %s from %s: series %s already has %d instances (max_instances); refused",
                        sop, calling, series, self.cfg.max_instances)
            return OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset(include_meta=True)  # Part 10 file: preamble, meta, bytes as sent
            self._store(folder, f"{sop}.dcm", data, calling)
        except OSError as exc:
            log.error("C-STORE %s (series %s from %s) not written: %s", sop, series, calling, exc)
            return OUT_OF_RESOURCES
        # Acknowledged from here on. Decode into the series' assembler now, while the bytes are in memory.
        image = None
        try:
            ds.file_meta = event.file_meta
            image = None if non_image_reason(ds) else ds
        except Exception:  # a malformed header is the series' problem, reported by its verdict
            image = None
        self.tracker.add(key, sop, image, folder / f"{sop}.dcm", station=calling, folder=folder,
                         assoc=id(event.assoc))
        return SUCCESS

    def _store(self, folder: Path, name: str, data: bytes, calling: str) -> None:
        for attempt in (0, 1):
            try:
                self._ensure_dir(folder, calling)
                atomic_write(folder / name, data)
                return
            except FileNotFoundError:
                if attempt:  # folder removed under us (cleanup job?): recreate once
                    raise
                self._known_dirs.discard(folder)

    def _ensure_dir(self, folder: Path, calling: str) -> None:
        if folder in self._known_dirs:
            return
        missing: list[Path] = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):  # the new entries themselves must survive a crash
            fsync_dir(d.parent)
        if not (folder / ARRIVAL).exists():
            info = {"station": calling, "first_received": _now().isoformat()}
            atomic_write(folder / ARRIVAL, json.dumps(info).encode())
        self._known_dirs.add(folder)

    # -- MPPS (each instance belongs to the site that created it) -------------------------------

    def _on_n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req = event.request
        uid = _valid_uid(req.AffectedSOPInstanceUID) or _generate_uid()
        attrs = event.attribute_list
        if "PerformedProcedureStepStatus" not in attrs:
            return MISSING_ATTRIBUTE, None
        site = self._site_for(str(event.assoc.requestor.ae_title))
        with self._lock:
            if uid in self._mpps:
                return DUPLICATE_INSTANCE, None
            ds = Dataset()
            ds.SOPClassUID = ModalityPerformedProcedureStep
            ds.SOPInstanceUID = uid
            ds.update(attrs)
            self._mpps[uid] = (site, ds)
            while len(self._mpps) > _MAX_MPPS:
                self._mpps.popitem(last=False)
        log.info("MPPS %s created by %s: %s", uid, event.assoc.requestor.ae_title,
                 attrs.PerformedProcedureStepStatus)
        self._mpps_update(site, ds)
        return SUCCESS, ds

    def _on_n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID)
        site = self._site_for(str(event.assoc.requestor.ae_title))
        with self._lock:
            entry = self._mpps.get(uid)
            if entry is None or entry[0] != site:  # another site's step does not exist for this sender
                return NO_SUCH_OBJECT, None
            ds = entry[1]
            ds.update(event.modification_list)
        log.info("MPPS %s set by %s: %s", uid, event.assoc.requestor.ae_title,
                 ds.get("PerformedProcedureStepStatus"))
        self._mpps_update(site, ds)
        return SUCCESS, ds

    def _mpps_update(self, site: str, ds: Dataset) -> None:
        """COMPLETED/DISCONTINUED: the listed series (or, if none listed, the study's) of ``site`` are done."""
        if str(ds.get("PerformedProcedureStepStatus", "")).upper() not in _FINAL_MPPS:
            return
        series_refs: dict[str, set[str] | None] = {}
        for item in ds.get("PerformedSeriesSequence", []) or []:
            s = _valid_uid(item.get("SeriesInstanceUID"))
            if not s:
                continue
            sops = {str(r.ReferencedSOPInstanceUID) for r in item.get("ReferencedImageSequence", []) or []
                    if "ReferencedSOPInstanceUID" in r}
            series_refs[s] = sops or None
        scheduled = ds.get("ScheduledStepAttributesSequence", []) or []
        studies = {u for u in (_valid_uid(i.get("StudyInstanceUID")) for i in scheduled) if u}
        self.tracker.mpps_completed(site, series_refs, studies)

    # -- restart -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Queue every series folder whose files are not all covered by a ``.verdict`` marker."""
        n = 0
        for folder in sorted(self.incoming.glob("*/*/*")):
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):  # never acknowledged: the sender got no success status
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if not (folder / ARRIVAL).exists():  # not made by this receiver (e.g. incoming/http uploads)
                continue
            files = _dcm_files(folder)
            if not files or _covered(folder, files):
                continue
            site, study, series = folder.parts[-3:]
            arrival: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                arrival = json.loads((folder / ARRIVAL).read_text())
            provisional: list[int] = []
            with contextlib.suppress(OSError, ValueError, TypeError):
                provisional = [int(i) for i in json.loads((folder / PROVISIONAL).read_text())["verdict_ids"]]
            mtimes = [e.stat().st_mtime for e in files]
            last = dt.datetime.fromtimestamp(max(mtimes), dt.timezone.utc)
            try:
                first = dt.datetime.fromisoformat(arrival["first_received"])
            except (KeyError, TypeError, ValueError):
                first = dt.datetime.fromtimestamp(min(mtimes), dt.timezone.utc)
            # Wait a full quiet period: the modality may still be re-sending what it was sending.
            self.tracker.recover((site, study, series), folder, {e.name[:-4] for e in files},
                                 str(arrival.get("station", "")), first, last, provisional)
            n += 1
        if n:
            log.info("restart: %d series on disk without a final verdict queued again", n)


def _on_final(folder: Path, snapshot: dict[str, int]) -> None:
    if snapshot:
        _write_marker(folder, snapshot)
    with contextlib.suppress(OSError):
        (folder / PROVISIONAL).unlink()


def _on_provisional(folder: Path, ids: list[int]) -> None:
    """Remember a provisional verdict's ids so that a check after a restart replaces it."""
    with contextlib.suppress(OSError):
        atomic_write(folder / PROVISIONAL, json.dumps({"verdict_ids": ids}).encode())


def _write_marker(folder: Path, snapshot: dict[str, int]) -> None:
    body = {"files": sorted(snapshot), "max_mtime_ns": max(snapshot.values(), default=0),
            "written_at": _now().isoformat()}
    atomic_write(folder / MARKER, json.dumps(body).encode())


def _covered(folder: Path, files: list[os.DirEntry]) -> bool:
    try:
        body = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    seen, max_mtime = set(body.get("files", [])), int(body.get("max_mtime_ns", 0))
    return all(e.name in seen and e.stat().st_mtime_ns <= max_mtime for e in files)


def _set_nodelay(event: evt.Event) -> None:
    """pynetdicom leaves Nagle on; with delayed ACKs that costs ~40 ms per C-STORE response."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quickack(event: evt.Event) -> None:
    """ACK at once instead of delaying up to 40 ms. A sender that leaves Nagle on (pynetdicom does)
    holds the second half of each C-STORE request until our ACK arrives; measured 57 -> 13 ms per
    small instance. Linux resets QUICKACK after a while, hence once per received PDU."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _generate_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


# ---------------------------------------------------------------------------------------------
# Wiring to the service


def sr_path(data_dir: Path, site_id: str, study_uid: str, series_uid: str) -> Path:
    """Where the verdict SR of a checked series is kept (overwritten by a re-check)."""
    return Path(data_dir) / "sr" / _safe_name(site_id) / study_uid / f"{series_uid}.dcm"


def publish_sr(verdicts: list[Any], folder: Path, meta: SeriesArrival, cfg: ReceiverConfig,
               send: bool = True) -> list[Path]:
    """Write one SR per verdict next to the data (and, when ``send``, C-STORE it if configured: final
    verdicts only). Never raises: the verdict is already stored, and an SR problem must not make the series
    be checked again."""
    import pydicom
    from scanqc.serving.sr import send_sr, verdict_to_sr, write_sr

    out: list[Path] = []
    try:
        ref = meta.series.header if meta.series is not None else None  # read on arrival: no second parse
        if ref is None:
            files = sorted(e.path for e in _dcm_files(folder))
            if not files:
                return out
            ref = pydicom.dcmread(files[0], stop_before_pixels=True)
        for v in verdicts:
            d = v.to_dict() if hasattr(v, "to_dict") else dict(v)
            sr = verdict_to_sr(d, ref)
            path = write_sr(sr, sr_path(cfg.data_dir, meta.site_id, meta.study_uid,
                                        str(d.get("series_uid") or meta.series_uid)))
            out.append(path)
            if cfg.sr_destination and send:
                send_sr(sr, cfg.sr_destination, calling_ae=cfg.ae_title)
    except Exception:
        log.exception("series %s: verdict SR not written/sent", meta.series_uid)
    return out


def processor_callback(processor: Any,
                       cfg: ReceiverConfig) -> tuple[OnSeriesComplete, OnSeriesComplete, OnSeriesComplete]:
    """(``on_series_complete``, ``on_series_final``, ``on_first_instance``) running the service's single code
    path on the series assembled on arrival; verdicts are also published as SRs (sent on when final)."""

    def on_series_complete(folder: Path, meta: SeriesArrival) -> list[int]:
        if meta.series is None:  # not assembled on arrival (a caller outside the tracker): read the folder
            verdicts = processor.process_folder(folder, site_id=meta.site_id, station=meta.station,
                                                source="dicom", received_at=meta.last_received)
            publish_sr(verdicts, folder, meta, cfg)
            return []
        done = processor.process_series(meta.series, site_id=meta.site_id, stations=meta.stations or (meta.station,),
                                        source="dicom", received_at=meta.last_received, arrival=meta)
        if done:  # on disk for GET /api/series/<uid>/sr at once; sent on only when final
            publish_sr([p.verdict for p in done if p.station == meta.station], folder, meta, cfg, send=meta.final)
        return [p.verdict_id for p in done]

    def on_series_final(folder: Path, meta: SeriesArrival) -> None:
        verdicts = processor.finalize(list(meta.replaces), completed_by=meta.completed_by)
        publish_sr(verdicts[:1], folder, meta, cfg)

    def on_first_instance(folder: Path, meta: SeriesArrival) -> list[int]:
        if not hasattr(processor, "process_header") or meta.series is None:
            return []
        done = processor.process_header(meta.series, site_id=meta.site_id, stations=meta.stations or (meta.station,),
                                        source="dicom", received_at=meta.last_received, arrival=meta)
        return [p.verdict_id for p in done]

    return on_series_complete, on_series_final, on_first_instance


def make_receiver(settings: Any, processor: Any, **overrides: Any) -> Receiver:
    """A receiver wired to ``processor.process_series`` (not started: call ``start()``/``stop()``)."""
    from scanqc.checks.ml import inplane_targets

    cfg = ReceiverConfig.from_settings(settings, **overrides)
    complete, final, first = processor_callback(processor, cfg)
    try:  # the models' in-plane grids, so each slice is resampled as it arrives (none: all after the last)
        inplane = inplane_targets(getattr(processor, "models", None))
    except Exception:
        log.warning("model input grids unknown; slices are resampled after the last instance", exc_info=True)
        inplane = None
    return Receiver(cfg, complete, final, first, inplane=inplane)


def run_receiver(settings: Any, processor: Any, **overrides: Any) -> None:
    """Serve until SIGINT/SIGTERM (main thread) or until the returned receiver's ``stop()``.

    For a thread inside ``scanqc serve`` use :func:`make_receiver` and keep the handle to stop it.
    """
    _serve_until_signalled(make_receiver(settings, processor, **overrides).start())


def _serve_until_signalled(rx: Receiver) -> None:
    """Block in ``rx.serve()``; SIGINT/SIGTERM (when on the main thread) stop it cleanly."""
    import signal

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: rx.request_stop())
    try:
        rx.serve()
    finally:
        rx.stop()


def _check_path_callback(folder: Path, meta: SeriesArrival) -> list[Any]:
    """Stand-alone mode without the service: check and log (the same pipeline, no store)."""
    from scanqc.pipeline import check_path, check_series

    verdicts = [check_series(meta.series)] if meta.series is not None else check_path(folder)
    for v in verdicts:
        log.info("verdict %s for series %s from %s: %s", v.status, v.series_uid, meta.station,
                 ", ".join(v.actions) or "no action")
    return verdicts


def main(argv: list[str] | None = None) -> None:
    """``python -m scanqc.serving.receiver --data-dir D``: receiver without the HTTP service (debugging)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--port", type=int, default=11112)
    ap.add_argument("--ae-title", default="SCANQC")
    ap.add_argument("--quiet", type=float, default=5.0)
    ap.add_argument("--site", action="append", default=[], metavar="AE=SITE")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ReceiverConfig(a.data_dir, a.port, a.ae_title, a.quiet, dict(s.split("=", 1) for s in a.site))

    def on_complete(folder: Path, meta: SeriesArrival) -> None:
        verdicts = _check_path_callback(folder, meta)
        if meta.final:
            publish_sr(verdicts, folder, meta, cfg)

    _serve_until_signalled(Receiver(cfg, on_complete).start())


if __name__ == "__main__":
    main()
