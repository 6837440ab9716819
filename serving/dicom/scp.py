"""The storage SCP: pushed instances written durably, then fed to the series tracker.

Scanners C-STORE instances; each one is written durably (temp file, fsync, atomic rename, directory
fsync) to ``<data_dir>/incoming/<site>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` *before* the
success status goes back, so nothing acknowledged can be lost; the same dataset is then decoded into the
series' assembler (:mod:`scanqc.ingest`), so a complete series needs only its model checks. After the final
verdict a ``.verdict`` marker lists the files it saw; on start, series folders whose files are not all
covered by a marker are queued again. Logs carry UIDs and AE titles only, never patient attributes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
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
from scanqc.serving.dicom.common import (
    ARRIVAL,
    CANNOT_UNDERSTAND,
    MARKER,
    OUT_OF_RESOURCES,
    PROVISIONAL,
    SUCCESS,
    _dcm_files,
    _now,
    _safe_name,
    _valid_uid,
)
from scanqc.serving.dicom.config import OnSeriesComplete, ReceiverConfig
from scanqc.serving.dicom.mpps import MppsTable

from scanqc.ingest.tracker import SeriesKey, SeriesTracker
from scanqc.io.dicom import non_image_reason
from scanqc.io.durable import atomic_write, fsync_dir
from scanqc.preprocessing import InplanePass

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


class Receiver:
    """Storage/Verification/MPPS SCP in front of a :class:`SeriesTracker`. ``start()`` returns; ``serve()`` blocks.

    ``on_series_complete(folder, meta)`` checks a series (``meta.series`` is assembled, ``meta.final`` says
    whether a later instance is still expected) and returns the stored verdict ids; ``on_series_final(folder,
    meta)`` confirms the provisional verdicts ``meta.replaces`` without a re-check.
    """

    def __init__(self, settings: Any, on_series_complete: OnSeriesComplete,
                 on_series_final: OnSeriesComplete | None = None, on_first_instance: OnSeriesComplete | None = None,
                 inplane: dict[str, tuple[InplanePass, ...]] | None = None, **overrides: Any) -> None:
        self.cfg = ReceiverConfig.from_settings(settings, **overrides)
        self.on_series_complete = on_series_complete
        self.incoming = Path(self.cfg.data_dir) / "incoming"
        self._lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._stop = threading.Event()
        self._server: Any = None
        self.tracker = SeriesTracker(self.cfg.policy(), on_series_complete, on_finalize=on_series_final,
                                     on_final=_on_final, on_provisional=_on_provisional,
                                     on_first=on_first_instance if self.cfg.adaptive else None,
                                     workers=self.cfg.workers, retries=self.cfg.retries,
                                     retry_delay_s=self.cfg.retry_delay_s, max_instances=self.cfg.max_instances,
                                     inplane=inplane)
        self.mpps = MppsTable(self.tracker.mpps_completed)

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

    # -- MPPS (each step belongs to the site that created it: serving/dicom/mpps.py) ---------------

    def _on_n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        ae = str(event.assoc.requestor.ae_title)
        return self.mpps.create(self._site_for(ae), event.request.AffectedSOPInstanceUID, event.attribute_list, ae)

    def _on_n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        ae = str(event.assoc.requestor.ae_title)
        return self.mpps.set(self._site_for(ae), str(event.request.RequestedSOPInstanceUID),
                             event.modification_list, ae)

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

