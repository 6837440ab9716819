"""Wiring the receiver to the service's single code path, verdict SRs, and the stand-alone receiver."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from scanqc.serving.dicom.common import _dcm_files, _safe_name
from scanqc.serving.dicom.config import OnSeriesComplete, ReceiverConfig
from scanqc.serving.dicom.scp import Receiver

from scanqc.ingest.tracker import SeriesArrival

log = logging.getLogger("scanqc.receiver")


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
    """``python -m scanqc.serving.dicom --data-dir D``: receiver without the HTTP service (debugging)."""
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

