"""The BentoML QC service: ``bentoml serve scanqc.serving.service:QCService`` (or ``scanqc serve``).

Two BentoML services, one deployment:

- :class:`QCService` (entry): ``POST /api/check`` takes a series as multipart files (DICOM instances, a zip,
  or a NIfTI file), writes it durably under ``data_dir``, runs :class:`Processor` (which calls
  ``scanqc.pipeline.check_path``, the same path as ``scanqc check``) and returns the verdicts. It also
  mounts :mod:`scanqc.serving.web` (console, dashboard, series/queries API) and, in its first worker,
  the DICOM C-STORE receiver, so HTTP and DICOM verdicts share one Processor and one set of metrics.
- :class:`InferenceService`: one ``batchable=True`` API per model task. The checks' ``CheckContext.infer``
  seam calls it through ``bentoml.depends``, so model inference from concurrent series (HTTP uploads and
  DICOM associations alike) is adaptively batched by BentoML. Its ``/readyz`` is green only once every
  installed model has an onnxruntime session.

Readiness (``/readyz``) of the entry service requires the database (migrated) and the inference service;
``/livez`` is BentoML's; ``/metrics`` carries BentoML's HTTP metrics plus ``scanqc_*`` ones below.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import bentoml
import numpy as np
import pydicom.config
from scanqc.serving import auth, patches, web
from scanqc.serving.config import Settings, load_settings
from scanqc.serving.pool import FairPool
from scanqc.serving.processing import Processed, Processor
from scanqc.serving.store import Store

from scanqc.cancel import CancelToken
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.io.durable import atomic_write, fsync_dir, fsync_tree
from scanqc.io.sources import cleanup_stale_extractions
from scanqc.threads import limit_blas_threads

log = logging.getLogger("scanqc.serving")
limit_blas_threads()  # this process is the service: concurrency comes from its own threads (scanqc/threads.py)

# Two BentoML server bugs made the API worker's memory grow with every request (docs/reliability.md "Load"):
# TimeoutMiddleware kept each request's context and OpenTelemetry span alive for traffic.timeout seconds, and
# the request metrics added a Prometheus label set per URL. Patched here, before any worker builds its app.
PATCHES = patches.apply(web.app.routes)

TASKS = ("motion", "contrast_phase", "coverage")
_MAX_BATCH = int(os.environ.get("SCANQC_MAX_BATCH_SIZE", "16"))
_MAX_LATENCY_MS = int(os.environ.get("SCANQC_MAX_LATENCY_MS", "1000"))
_WORKERS = int(os.environ.get("SCANQC_WORKERS", "1"))

# -- QC metrics (exported on /metrics next to BentoML's own) ---------------------------------------
VERDICTS = bentoml.metrics.Counter(name="scanqc_verdicts_total", documentation="Series verdicts by status",
                                   labelnames=["status", "source"])
CHECKS = bentoml.metrics.Counter(name="scanqc_checks_total",
                                 documentation="Check results by check and status (a verdict has several)",
                                 labelnames=["check", "status"])
VERDICT_SECONDS = bentoml.metrics.Histogram(
    name="scanqc_verdict_seconds", documentation="Pipeline time per series (read + checks)",
    labelnames=["source"], buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0))
TURNAROUND_SECONDS = bentoml.metrics.Histogram(
    name="scanqc_turnaround_seconds", documentation="Receipt (series complete) to stored verdict",
    labelnames=["source"], buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0))
QUEUE_DEPTH = bentoml.metrics.Gauge(name="scanqc_queue_depth",
                                    documentation="Series inputs being checked or waiting for a check slot",
                                    labelnames=[])
INFER_BATCH = bentoml.metrics.Histogram(name="scanqc_inference_batch_size",
                                        documentation="Series per adaptive inference batch", labelnames=["task"],
                                        buckets=(1, 2, 4, 8, 16, 32))


def _exit_with_parent() -> None:
    """Die when the BentoML arbiter dies. Its workers run in their own sessions, so after a ``kill -9``
    of the server they would otherwise live on as orphans holding the HTTP/DICOM ports (and a stale
    view of the data), and the restarted service could not bind."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                log.error("the server process is gone; this worker exits too")
                os._exit(70)

    threading.Thread(target=watch, name="scanqc-parent-watch", daemon=True).start()


@bentoml.service(name="scanqc-inference", workers=1, traffic={"timeout": 120})
class InferenceService:
    """Adaptively batched ONNX inference, one batchable endpoint per task (inputs [N, C, D, H, W])."""

    def __init__(self) -> None:
        if bentoml.server_context.worker_index is not None:  # a served worker, not an in-process import
            _exit_with_parent()
        self.models: dict[str, Any] = {}
        self.load_errors: dict[str, str] = {}
        try:
            from scanqc.models import default_registry

            registry = default_registry()
        except Exception as exc:  # no registry = no model checks; they say "skipped"
            log.warning("model registry unavailable: %s", exc)
            registry = None
        for task in TASKS:
            try:
                m = registry.get(task) if registry is not None else None
                if m is not None:
                    _ = m.onnx.session  # create the session now: /readyz means "models loaded"
                    self.models[task] = m
            except Exception as exc:
                self.load_errors[task] = f"{type(exc).__name__}: {exc}"
                log.error("loading %s model failed: %s", task, exc)
        self.ready = not self.load_errors

    def __is_ready__(self) -> bool:
        return self.ready

    def _run(self, task: str, batch: np.ndarray) -> np.ndarray:
        INFER_BATCH.labels(task=task).observe(int(batch.shape[0]))
        m = self.models.get(task)
        if m is None:
            raise bentoml.exceptions.NotFound(f"no {task} model loaded")
        return np.asarray(m.run(batch), dtype=np.float32)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_MAX_BATCH, max_latency_ms=_MAX_LATENCY_MS)
    def motion(self, batch: np.ndarray) -> np.ndarray:
        return self._run("motion", batch)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_MAX_BATCH, max_latency_ms=_MAX_LATENCY_MS)
    def contrast_phase(self, batch: np.ndarray) -> np.ndarray:
        return self._run("contrast_phase", batch)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_MAX_BATCH, max_latency_ms=_MAX_LATENCY_MS)
    def coverage(self, batch: np.ndarray) -> np.ndarray:
        return self._run("coverage", batch)

    @bentoml.api
    def loaded(self) -> dict[str, Any]:
        return {"models": {t: getattr(m, "version", "?") for t, m in self.models.items()},
                "errors": self.load_errors}


_KEPT_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm", ".ima")
UPLOAD_META = ".upload.json"
UPLOAD_DONE = ".verdict"
UPLOAD_ATTEMPTS = ".attempts"  # checks started so far; written from the second on (the first is the upload's)
UPLOAD_QUARANTINED = ".quarantined"
MAX_ATTEMPTS = 2  # an upload whose check the service did not survive this often is quarantined, not re-run


def _original_name(tmp: Path, index: int) -> str:
    """A stored name for an uploaded file: its index plus a recognised suffix only.

    Client file names can carry patient names (``DOE_JANE_MRN123.dcm``); they would end up in the verdict's
    ``input`` and so in the database. The suffix is all the pipeline needs (``.nii.gz`` vs ``.zip``...).
    """
    lower = tmp.name.lower()
    suffix = next((x for x in _KEPT_SUFFIXES if lower.endswith(x)), "")
    return f"{index:05d}{suffix}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data).encode())


# Per-entity routes (a UID, station or id in the path) are left out of BentoML's access log. (BentoML also
# passes this list to its request metrics, but there it only spares last_request_timestamp: the endpoint
# labels are bounded by serving/patches.py, which labels requests by route template.)
_UNBOUNDED_PATHS = ["/metrics", "/healthz", "/livez", "/readyz", "/api/series/", "/api/verdicts/",
                    "/api/stations/", "/api/uploads/", "/api/queries/", "/api/admin/studies/",
                    "/api/admin/tokens/", "/console/", "/api/sync/records/"]


@bentoml.service(name="scanqc", workers=_WORKERS, traffic={"timeout": 300},
                 http={"cors": {"enabled": False}}, logging={"access": {"skip_paths": _UNBOUNDED_PATHS}})
@bentoml.asgi_app(web.app, path="/")
class QCService:
    """Series in, verdict out, stored first; console, dashboard and queries under the same server."""

    inference = bentoml.depends(InferenceService)

    def __init__(self) -> None:
        t0 = time.perf_counter()
        if bentoml.server_context.worker_index is not None:
            _exit_with_parent()
        self.settings: Settings = load_settings()
        # pydicom's "Invalid value for VR PN: 'Doe^Jane...'" warnings would copy header values (patient
        # data) into the log; invalid values still surface as coded errors or check findings.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.incoming_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.default_salt:
            log.warning("SCANQC_SALT is the built-in default: set a per-deployment secret before real data")
        self.store = Store(self.settings.db_url)  # runs the Alembic migrations
        # BentoML builds the instance on the server's event loop. Checks run in worker threads (our pool,
        # the DICOM receiver's); they reach the batching InferenceService by scheduling its async client
        # on this loop. The sync client needs an AnyIO worker thread and fails in plain threads.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside a server (in-process use)
            self._loop = None
        self.processor = Processor(self.settings, self.store, infer=self._infer)
        self.processor.listeners.append(self._observe)
        self._concurrency = max(1, self.settings.concurrency)
        # Own pool for pipelines: long checks must not occupy the event loop's default executor, which the
        # read API, auth lookups and the console's SSE polls use. Shared fairly between sites.
        self._pool = FairPool(self._concurrency, self.settings.checks_per_site, name="scanqc-http")
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.receiver: Any = None
        self.receiver_error: str | None = None
        web.bind(web.AppState(settings=self.settings, store=self.store, processor=self.processor,
                              service=self))
        self._start_receiver()
        if bentoml.server_context.worker_index in (None, 1):
            # Extractions of processes killed mid-check (their `finally` never ran) would stay forever.
            removed = cleanup_stale_extractions()
            if removed:
                log.warning("removed %d stale zip extraction folder(s) from %s", removed, tempfile.gettempdir())
        self._recover_uploads()
        log.warning("scanqc service ready in %.2f s (db %s)", time.perf_counter() - t0,
                    self.settings.public()["db_url"])

    # -- DICOM receiver (owned by scanqc.serving.dicom) ---------------------------------------
    def _start_receiver(self) -> None:
        if not self.settings.dicom_enabled:
            return
        idx = bentoml.server_context.worker_index
        if idx not in (None, 1):  # one listener per host port: only the first worker
            return
        try:
            from scanqc.serving.dicom import make_receiver
        except ImportError as exc:
            self.receiver_error = f"receiver not available: {exc}"
            log.warning(self.receiver_error)
            return
        try:
            # In this process, so DICOM verdicts share the batching inference seam, metrics and console wake-up.
            self.receiver = make_receiver(self.settings, self.processor, default_site=self.settings.default_site,
                                          workers=self._concurrency).start()
        except Exception as exc:  # e.g. the DICOM port is taken: HTTP keeps working, /api/status says why
            self.receiver_error = f"{type(exc).__name__}: {exc}"
            log.error("DICOM receiver failed: %s", self.receiver_error)

    def _recover_uploads(self) -> None:
        """Check again HTTP uploads that were persisted but never got a verdict (the service stopped
        mid-check). One whose check the service already failed to finish ``MAX_ATTEMPTS`` times is
        quarantined instead: kept on disk for the operator, an error verdict ``QUARANTINED`` stored, never
        re-run (an input that kills the worker would otherwise do so at every start)."""
        if bentoml.server_context.worker_index not in (None, 1):
            return
        root = self.settings.incoming_dir / "http"
        todo = [f for f in sorted(root.glob("*")) if (f / UPLOAD_META).is_file() and not (f / UPLOAD_DONE).exists()
                and not (f / UPLOAD_QUARANTINED).exists()]
        for folder in todo:
            try:
                meta = json.loads((folder / UPLOAD_META).read_text())
                received = dt.datetime.fromisoformat(meta.pop("received_at"))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("upload %s: unreadable upload record (%s); skipped", folder.name, type(exc).__name__)
                continue
            attempts = _read_attempts(folder)
            if attempts >= MAX_ATTEMPTS:
                self._quarantine(folder, received, meta, attempts)
                continue
            log.warning("restart: upload %s has no verdict yet; checking it again (attempt %d of %d)",
                        folder.name, attempts + 1, MAX_ATTEMPTS)
            self._enter()
            # No client waits for it, so the check's time limit runs from when it starts.
            token = CancelToken(self.settings.check_timeout_s, start=False)
            self._pool.submit(meta.get("site_id") or self.settings.default_site, self._run_upload, folder,
                              received, meta, token, attempts + 1)

    def _quarantine(self, folder: Path, received: dt.datetime, meta: dict[str, Any], attempts: int) -> None:
        log.error("upload %s: the service stopped %d times while checking it; quarantined (kept in %s, "
                  "not checked again)", folder.name, attempts, folder)
        message = (f"the service stopped {attempts} times while checking this upload; it is kept for the "
                   "operator and not checked again (send the series again, split if it is very large)")
        try:
            pairs = self.processor.record_error(folder, ErrorCode.QUARANTINED.value, message,
                                                site_id=meta.get("site_id"), station=str(meta.get("station") or
                                                                                         "http"),
                                                source="http", received_at=received, study_id=meta.get("study_id"))
        except Exception as exc:  # the marker below still stops the re-runs
            log.error("upload %s: storing its quarantine verdict failed (%s)", folder.name, type(exc).__name__)
            pairs = []
        at = dt.datetime.now(dt.timezone.utc).isoformat()
        _write_json(folder / UPLOAD_QUARANTINED, {"attempts": attempts, "at": at})
        _write_json(folder / UPLOAD_DONE, {"series_uids": [v.series_uid for v, _ in pairs],
                                           "verdict_ids": [vid for _, vid in pairs],
                                           "statuses": [v.status for v, _ in pairs],
                                           "site_id": meta.get("site_id") or self.settings.default_site, "at": at})

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        self._pool.shutdown(wait=True)
        self.store.close()

    # -- model inference seam ---------------------------------------------------------------------
    def _infer(self, task: str, batch: np.ndarray) -> np.ndarray:
        """``CheckContext.infer``: send one series' batch to the batching inference service."""
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        if self._loop is None:
            return np.asarray(getattr(self.inference, task)(arr))
        call = getattr(self.inference.to_async, task)(arr)
        timeout = self.settings.check_timeout_s
        return np.asarray(asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=timeout))

    # -- metrics ----------------------------------------------------------------------------------
    def _observe(self, ev: Processed) -> None:
        v = ev.verdict
        VERDICTS.labels(status=v.status, source=ev.source).inc()
        for name, c in v.checks.items():
            CHECKS.labels(check=name, status=c.status).inc()
        VERDICT_SECONDS.labels(source=ev.source).observe(v.elapsed_ms / 1000)
        TURNAROUND_SECONDS.labels(source=ev.source).observe(
            max((ev.verdict_at - ev.received_at).total_seconds(), 0.0))
        self._set_depth()
        web.notify_threadsafe()

    def _set_depth(self) -> None:
        # HTTP uploads accepted and not yet answered + DICOM series being checked.
        QUEUE_DEPTH.set(self._waiting + self.processor.in_flight("dicom"))

    # -- health -----------------------------------------------------------------------------------
    async def __is_ready__(self) -> bool:
        try:
            await asyncio.to_thread(self.store.ping)
        except Exception:
            return False
        is_ready = getattr(self.inference, "is_ready", None)
        if is_ready is None:  # in-process (tests, bentoml.importing): the object exists, so it loaded
            return bool(getattr(self.inference, "ready", True))
        try:
            return bool(await is_ready(timeout=2))
        except Exception:
            return False

    # -- API --------------------------------------------------------------------------------------
    @bentoml.api(route="/api/check")
    async def check(self, files: list[Path] = [], station: str = "http", site: str = "",  # noqa: B006
                    study: str = "", visit: str = "", modality: str = "", complete_study: bool = False,
                    ctx: bentoml.Context = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Check one upload: DICOM instances (one or more series), a .zip of them, or a NIfTI file.

        Form fields: ``station`` (console to notify, e.g. the scanner name), ``site``, ``study`` (selects the
        acquisition guideline; default: the site's study), ``visit``, ``modality`` (for NIfTI),
        ``complete_study`` (the upload is a whole visit: also check required series).
        Returns the verdicts (the ``scanqc check --json`` objects, plus ``verdict_id``). 400/404/413/422 with
        ``{"error": {"code", "message"}}`` for bad requests; an unreadable upload is 422 with its verdict.
        """
        # Over HTTP, SecurityMiddleware parses the multipart body itself and calls handle_upload (the
        # framework's own parser answers 500 to malformed fields and would fetch URLs given as 'files');
        # this entry serves in-process callers and documents the API in the OpenAPI spec.
        who = web.principal_of(ctx.request) if ctx is not None and ctx.request is not None else auth.OPEN
        status, out = await self.handle_upload(who, list(files), {
            "station": station, "site": site, "study": study, "visit": visit, "modality": modality,
            "complete_study": complete_study})
        if ctx is not None:
            ctx.response.status_code = status
        return out

    async def handle_upload(self, who: auth.Principal, files: list[Any], form: dict[str, Any]
                            ) -> tuple[int, dict[str, Any]]:
        """Authorise, persist (fsync) and check one upload; (HTTP status, JSON body).

        ``files`` are paths (moved into data_dir) or file objects with ``.file``/``.size`` (Starlette
        uploads, copied). The answer comes once the verdicts are stored, or 504 CHECK_TIMEOUT.
        """
        received_at = dt.datetime.now(dt.timezone.utc)
        station = str(form.get("station") or "http").strip()[:64] or "http"
        site_id = str(form.get("site") or "").strip()[:64] or None
        study = str(form.get("study") or "")
        visit, modality = str(form.get("visit") or ""), str(form.get("modality") or "")
        complete_study = bool(form.get("complete_study"))
        if not who.can_submit:
            return 403, web.error_body("FORBIDDEN", f"a {who.role} token cannot submit series")
        if who.role == "site":
            if site_id and site_id != who.site_id:
                return 403, web.error_body("WRONG_SITE", f"this token belongs to site {who.site_id}, not {site_id}")
            site_id = who.site_id
        try:
            _, study_id, _ = await asyncio.to_thread(self.processor.resolve, site_id, study.strip() or None)
        except ScanQCError as exc:
            return 400, web.error_body(exc.code.value, exc.message)
        if not files:
            return 400, web.error_body("EMPTY_INPUT", "no files in the upload: send multipart field 'files' "
                                                      "(DICOM instances, a .zip or a .nii/.nii.gz)")
        total = sum(int(f.stat().st_size) if isinstance(f, Path) else int(f.size or 0) for f in files)
        if total > self.settings.max_upload_bytes:  # the middleware stops larger bodies while they stream
            return 413, web.error_body("TOO_LARGE", f"upload of {total} bytes exceeds the "
                                                    f"{self.settings.max_upload_bytes}-byte limit")
        upload_id = received_at.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:12]
        folder = self.settings.incoming_dir / "http" / upload_id
        meta = {"site_id": site_id, "station": station, "study_id": study_id, "visit": visit.strip() or None,
                "modality_hint": modality.strip().upper() or None, "complete_study": complete_study}
        await asyncio.to_thread(self._persist, files, folder, {**meta, "received_at": received_at.isoformat()})
        # Acknowledged from here on: the files and the request are on disk; a restart finishes the check.
        self._enter()
        token = CancelToken()
        site_key = site_id or self.settings.default_site
        fut = asyncio.wrap_future(self._pool.submit(site_key, self._run_upload, folder, received_at, meta, token))
        try:
            pairs = await asyncio.wait_for(asyncio.shield(fut), timeout=self.settings.check_timeout_s)
        except asyncio.TimeoutError:
            # Stop the work too (issue 15: a zip bomb's check went on for an hour after its 504); the check
            # stores an error verdict CHECK_TIMEOUT and marks the upload done, so no restart re-runs it.
            limit = self.settings.check_timeout_s
            token.cancel(f"the check took longer than {limit:g} s and was stopped")
            return 504, {"upload_id": upload_id, "station": station, "site_id": site_key,
                         **web.error_body("CHECK_TIMEOUT",
                                          f"the check took longer than {limit:g} s and was stopped; its error "
                                          f"verdict will be at /api/uploads/{upload_id} (and on the console); "
                                          "send a smaller series or retry later")}
        verdicts = [v for v, _ in pairs]
        out = [{"verdict_id": vid, **v.to_dict()} for v, vid in pairs]
        body: dict[str, Any] = {"upload_id": upload_id, "station": station,
                                "site_id": site_id or self.settings.default_site, "study_id": study_id,
                                "received_at": received_at.isoformat().replace("+00:00", "Z"), "verdicts": out}
        if verdicts and all(v.status == "error" for v in verdicts):
            first = verdicts[0].error or {"code": "INTERNAL", "message": "no verdict"}
            body["error"] = {"code": first["code"], "message": first["message"]}
            return 422, body
        return 200, body

    def _enter(self) -> None:
        with self._count_lock:
            self._waiting += 1
        self._set_depth()

    def _persist(self, files: list[Any], folder: Path, meta: dict[str, Any]) -> None:
        """Move/copy the upload into data_dir and fsync it, with its request: acknowledged means on disk."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(files):
            if isinstance(p, Path):
                shutil.move(str(p), folder / _original_name(p, i))
            else:  # a Starlette UploadFile: spooled to a temp file while the body streamed
                with open(folder / _original_name(Path(p.filename or "upload"), i), "wb") as out:
                    p.file.seek(0)
                    shutil.copyfileobj(p.file, out, 1 << 20)
        fsync_tree(folder)
        _write_json(folder / UPLOAD_META, meta)  # last: a folder without it was never acknowledged
        fsync_dir(folder.parent)

    def _run_upload(self, folder: Path, received_at: dt.datetime, meta: dict[str, Any],
                    token: CancelToken | None = None, attempt: int = 1) -> list[tuple[Any, int | None]]:
        """Check a persisted upload, store the verdicts (before anyone is told), then mark it done.

        Returns (verdict, verdict id) pairs. ``token`` stops the check (an error verdict CHECK_TIMEOUT).
        ``attempt`` > 1 (a check again after a restart) is recorded on disk before the check starts.
        """
        try:
            if attempt > 1:
                _write_json(folder / UPLOAD_ATTEMPTS, {"attempts": attempt})
            if token is not None:
                token.start()
            pairs = self.processor.check_folder(folder, source="http", received_at=received_at, cancel=token,
                                                **meta)
            _write_json(folder / UPLOAD_DONE, {"series_uids": [v.series_uid for v, _ in pairs],
                                               "verdict_ids": [vid for _, vid in pairs],
                                               "statuses": [v.status for v, _ in pairs],
                                               "site_id": meta.get("site_id") or self.settings.default_site,
                                               "at": dt.datetime.now(dt.timezone.utc).isoformat()})
            if not self.settings.keep_uploads:  # keep the small records, drop the images
                for p in folder.iterdir():
                    if not p.name.startswith("."):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
            return pairs
        finally:
            with self._count_lock:
                self._waiting -= 1
            self._set_depth()


def _read_attempts(folder: Path) -> int:
    """Checks of this upload started so far: the one at upload time, plus those recorded after restarts."""
    try:
        return max(1, int(json.loads((folder / UPLOAD_ATTEMPTS).read_text())["attempts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


# Authentication, streaming body limits and coded errors in front of every route (scanqc.serving.auth).
QCService.add_asgi_middleware(auth.SecurityMiddleware)
