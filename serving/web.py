"""Pages and the read/query API, a Starlette app mounted into the BentoML service at ``/``.

BentoML keeps its own routes (``/api/check``, ``/readyz``, ``/livez``, ``/metrics``, ``/docs.json``, the
Swagger UI at ``/``); this app adds:

- ``GET /console/{station}``: the technologist console; ``GET /api/stations/{station}/events`` is its
  server-sent-event stream (a new verdict is pushed as soon as it is stored, in this process or another);
- ``GET /dashboard``: the central dashboard (inline SVG plots + tables), ``GET /api/dashboard`` its data;
- ``GET /api/scanners``: scanner qualification (state, drift, recent phantom results per scanner);
- ``GET /api/series/{uid}`` (+ ``/sr``: the verdict as a DICOM Structured Report), ``GET /api/verdicts``;
- queries: ``GET /api/queries``, ``POST /api/queries``, ``POST /api/queries/{id}/answer|close``;
- mobile units: ``/api/sync/*`` and ``GET /api/units`` (:mod:`scanqc.serving.unit_sync`, docs/mobile.md).

Every error is ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanqc.serving import pages
from scanqc.serving.auth import COOKIE, OPEN, ROLES, Gate, Principal, create_token
from scanqc.serving.config import Settings
from scanqc.serving.processing import Processor
from scanqc.serving.store import MANAGED_REF, QueryStateError, Store
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from scanqc.errors import ScanQCError, exc_summary
from scanqc.io.dicom import valid_uid

log = logging.getLogger("scanqc.serving")

SSE_POLL_S = 0.25  # verdicts stored by another process (a separate receiver) show up within this
SSE_KEEPALIVE_S = 15.0


@dataclass
class AppState:
    settings: Settings
    store: Store
    processor: Processor
    service: Any = None
    gate: Gate = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.gate is None:
            self.gate = Gate(self.settings, self.store)


_state: AppState | None = None


def bind(state: AppState) -> None:
    """Called by the service once its store exists (one per worker process)."""
    global _state
    _state = state
    notifier.reset()


def current_state() -> AppState | None:
    return _state


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _st() -> AppState:
    if _state is None:
        raise ApiError(503, "NOT_READY", "service is starting")
    return _state


# -- authorization (authentication is SecurityMiddleware's job) ------------------------------------
def principal_of(request: Any) -> Principal:
    """The caller set by :class:`scanqc.serving.auth.SecurityMiddleware` (open demo mode: ``OPEN``)."""
    st = request.scope.get("state") or {}
    p = st.get("principal") if isinstance(st, dict) else getattr(st, "principal", None)
    return p if isinstance(p, Principal) else OPEN


def _need(request: Request, *, roles: tuple[str, ...]) -> Principal:
    p = principal_of(request)
    if p.role not in roles:
        raise ApiError(403, "FORBIDDEN", f"a {p.role} token cannot do this (needs {' or '.join(roles)})")
    return p


def _site_scope(request: Request, asked: str | None) -> str | None:
    """The site filter a caller may use: a site token sees only its own site (asking for another is 403)."""
    p = principal_of(request)
    if p.sees_all_sites:
        return asked
    if asked and asked != p.site_id:
        raise ApiError(403, "WRONG_SITE", f"this token belongs to site {p.site_id}, not {asked}")
    return p.site_id


def _own(request: Request, site_id: str | None, what: str) -> None:
    p = principal_of(request)
    if not p.sees_all_sites and site_id != p.site_id:
        raise ApiError(403, "WRONG_SITE", f"{what} belongs to another site")


# -- change notification for the console ----------------------------------------------------------
class Notifier:
    """Wakes SSE streams when a verdict is stored: directly in-process, by polling ``max(id)`` otherwise."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._subscribers = 0
        self._poller: asyncio.Task | None = None
        self._last_max: int | None = None

    def _ensure(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            self._loop, self._event = loop, asyncio.Event()
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll())
        return self._event

    def bump(self) -> None:
        self.version += 1
        if self._event is not None:
            ev, self._event = self._event, asyncio.Event()
            ev.set()

    def notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.bump)

    async def wait(self, seen_version: int, timeout: float) -> bool:
        """True when something changed since ``seen_version`` (or changes within ``timeout``)."""
        ev = self._ensure()
        if self.version != seen_version:
            return True
        self._subscribers += 1
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._subscribers -= 1

    async def _poll(self) -> None:
        idle = 0
        while idle < 40:  # stop ~10 s after the last stream went away; restarted on demand
            await asyncio.sleep(SSE_POLL_S)
            idle = idle + 1 if self._subscribers == 0 else 0
            if _state is None:
                continue
            try:
                m = await asyncio.to_thread(_state.store.change_marker)  # new verdicts and confirmations
            except Exception:
                continue
            if self._last_max is not None and m != self._last_max:
                self.bump()
            self._last_max = m


notifier = Notifier()


def notify_threadsafe() -> None:
    notifier.notify_threadsafe()


# -- helpers ----------------------------------------------------------------------------------------
def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    ctype = request.headers.get("content-type", "")
    # curl -d sends JSON labelled as a form: trust the body's first byte over the label.
    if not raw.lstrip().startswith(b"{") and ("form-urlencoded" in ctype or "multipart/form-data" in ctype):
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "BAD_REQUEST", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "BAD_REQUEST", "request body must be a JSON object")
    return data


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", f"query parameter {name}={raw!r} is not an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, "BAD_REQUEST", f"query parameter {name}={v} must be within {lo}..{hi}")
    return v


# Row ids are 32-bit in PostgreSQL (INTEGER) and 64-bit in SQLite: anything beyond cannot name a row, and
# handing it to the database driver raised OverflowError (a 500).
MAX_ROW_ID = 2**31 - 1


def _path_int(request: Request, name: str) -> int:
    raw = str(request.path_params[name])
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or not 1 <= int(raw) <= MAX_ROW_ID:
        raise ApiError(404, "NOT_FOUND", f"{name} {raw[:20]!r} is not a known id")
    return int(raw)


def _body_int(data: dict[str, Any], name: str) -> int:
    """An id in a JSON/form body: an integer (or a string of digits) within the row id range."""
    raw = data.get(name)
    if raw is None or raw == "":
        raise ApiError(400, "BAD_REQUEST", f"{name} (integer) is required")
    text = "" if isinstance(raw, bool) or not isinstance(raw, (int, str)) else str(raw).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_ROW_ID:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be an integer within 1..{MAX_ROW_ID}")
    return int(text)


def _uid_param(request: Request) -> str:
    """A series UID from the path: digits and dots, at most 64 characters (PS3.5 9.1), else 404."""
    uid = str(request.path_params["uid"])
    if valid_uid(uid) != uid:
        raise ApiError(404, "NOT_FOUND", "no such series (a series UID is digits and dots, at most 64 characters)")
    return uid


async def _db(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


def _preview_file(record: dict[str, Any]) -> Any:
    from scanqc.serving.preview import preview_path

    if _state is None:
        return None
    v = record["verdict"]
    path = preview_path(_state.settings.data_dir, record["site_id"], v.get("study_uid"), v.get("series_uid"))
    return path if path.is_file() else None


def _preview_url(record: dict[str, Any]) -> str | None:
    return f"/api/verdicts/{record['id']}/preview.png" if _preview_file(record) is not None else None


async def _owned_verdict(request: Request) -> tuple[int, dict[str, Any]]:
    """The verdict named by the path's ``id``, if the caller may see its site (404 / 403 otherwise)."""
    vid = _path_int(request, "id")
    rec = await _db(_st().store.get_verdict, vid)
    if rec is None:
        raise ApiError(404, "NOT_FOUND", f"verdict {vid} not found")
    _own(request, rec["site_id"], f"verdict {vid}")
    return vid, rec


async def api_verdict_preview(request: Request) -> Response:
    vid, rec = await _owned_verdict(request)
    path = _preview_file(rec)
    if path is None:
        raise ApiError(404, "NOT_FOUND", f"no preview for verdict {vid}")
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})


def console_view(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the console shows for one stored verdict: status, reasons, actions."""
    if record is None:
        return None
    v = record["verdict"]
    reasons = [{"check": n, "status": c["status"], "message": c.get("message")}
               for n, c in v.get("checks", {}).items() if c["status"] in ("fail", "warn")]
    reasons.sort(key=lambda r: r["status"] != "fail")
    if v.get("error"):
        reasons.insert(0, {"check": "input", "status": "error",
                           "message": f"{v['error']['code']}: {v['error']['message']}"})
    actions = list(v.get("actions") or [])
    if v.get("error") and not actions:
        actions = ["Check the export and resend the series"]
    checks = [{"check": n, "status": c["status"], "message": c.get("message"), "score": c.get("score")}
              for n, c in v.get("checks", {}).items()]
    completion = v.get("completion") or {}
    final = bool(record.get("final", v.get("final", True)))
    n_new = int(completion.get("updated_with") or 0)
    return {"verdict_id": record["id"], "status": v["status"], "station": record["station"],
            "final": final, "provisional": not final, "completed_by": completion.get("completed_by"),
            "update": f"updated: {n_new} more image{'s' if n_new != 1 else ''}" if n_new else None,
            "checks": checks, "preview": _preview_url(record),
            "site_id": record["site_id"], "series_uid": v.get("series_uid"),
            "series_description": v.get("series_description"), "modality": v.get("modality"),
            "series_number": v.get("series_number"), "n_instances": v.get("n_instances"),
            "received_at": record["received_at"], "verdict_at": record["verdict_at"],
            "elapsed_ms": v.get("elapsed_ms"), "reasons": reasons, "actions": actions}


# -- API --------------------------------------------------------------------------------------------
async def api_status(request: Request) -> Response:
    _need(request, roles=("monitor", "admin"))
    st = _st()
    svc = st.service
    return _json({"settings": st.settings.public(),
                  "receiver": {"enabled": st.settings.dicom_enabled,
                               "ae_title": st.settings.dicom_ae_title, "port": st.settings.dicom_port,
                               "running": getattr(svc, "receiver", None) is not None,
                               "error": getattr(svc, "receiver_error", None)},
                  "auth": await asyncio.to_thread(st.gate.mode_line),
                  "in_flight": st.processor.in_flight()})


async def _series_records(request: Request, uid: str) -> list[dict[str, Any]]:
    records = await _db(_st().store.verdicts_for_series, uid)
    if not records:
        raise ApiError(404, "NOT_FOUND", f"no verdict for series {uid}")
    p = principal_of(request)
    if not p.sees_all_sites:
        records = [r for r in records if r["site_id"] == p.site_id]
        if not records:
            raise ApiError(403, "WRONG_SITE", f"series {uid} belongs to another site")
    return records


async def api_series(request: Request) -> Response:
    uid = _uid_param(request)
    records = await _series_records(request, uid)
    latest = records[0]
    return _json({"series_uid": uid, **latest, "history": [
        {k: r[k] for k in ("id", "station", "source", "received_at", "verdict_at", "final", "superseded_by")}
        | {"status": r["verdict"]["status"],
           "completed_by": (r["verdict"].get("completion") or {}).get("completed_by")}
        for r in records]})


def _reference_header(verdict: dict[str, Any]) -> Any:
    """A header of the checked series, read back from the stored input (the SR references it)."""
    import zipfile

    import pydicom

    p = Path(str(verdict.get("input") or ""))
    uid = verdict.get("series_uid")
    candidates = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []

    def matches(ds: Any) -> bool:
        return uid is None or str(ds.get("SeriesInstanceUID", "")) == uid

    for f in candidates[:5000]:
        try:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as zf:
                    for info in zf.infolist()[:5000]:
                        if info.is_dir():
                            continue
                        try:
                            with zf.open(info) as member:
                                ds = pydicom.dcmread(member, stop_before_pixels=True)
                        except Exception:
                            continue
                        if matches(ds):
                            return ds
                continue
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if matches(ds):
            return ds
    return None


async def api_series_sr(request: Request) -> Response:
    uid = _uid_param(request)
    records = await _series_records(request, uid)
    verdict = records[0]["verdict"]
    try:
        from scanqc.serving.sr import verdict_to_sr
    except ImportError:
        raise ApiError(501, "SR_UNAVAILABLE", "DICOM SR export is not installed in this build") from None
    ref = await asyncio.to_thread(_reference_header, verdict)
    if ref is None:
        raise ApiError(409, "NO_REFERENCE", f"series {uid}: the received DICOM files are no longer kept "
                                            "(keep_uploads=false or a NIfTI input), so no SR can reference them")
    try:
        ds = await asyncio.to_thread(verdict_to_sr, verdict, ref)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    except ScanQCError as exc:
        raise ApiError(422, exc.code.value, exc.message) from None
    except Exception as exc:  # the exception text can quote header values (patient data): masked
        log.error("SR for %s failed: %s", uid, exc_summary(exc))
        raise ApiError(500, "INTERNAL", f"building the SR failed ({type(exc).__name__})") from None
    # The file name is built from the validated UID's digits and dots only: nothing a client sent can add a
    # header parameter (issue 15: a stored UID `1.2.3"; filename="evil.exe` did).
    safe = "".join(c for c in uid if c.isascii() and (c.isdigit() or c == "."))[-32:] or "series"
    return Response(buf.getvalue(), media_type="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="scanqc-sr-{safe}.dcm"'})


async def api_upload(request: Request) -> Response:
    """State of an HTTP upload: ``pending`` (stored, being checked) or ``done`` with its verdicts."""
    uid = request.path_params["id"]
    if not uid or len(uid) > 64 or not set(uid) <= _ID_CHARS or uid.startswith("."):
        raise ApiError(404, "NOT_FOUND", "no such upload")
    folder = _st().settings.incoming_dir / "http" / uid

    def read() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        def load(name: str) -> dict[str, Any] | None:
            try:
                return json.loads((folder / name).read_text())
            except (OSError, ValueError):
                return None
        return load(".upload.json"), load(".verdict")

    meta, done = await asyncio.to_thread(read)
    if meta is None:
        raise ApiError(404, "NOT_FOUND", f"no upload {uid}")
    site = meta.get("site_id") or _st().settings.default_site
    _own(request, site, f"upload {uid}")
    state = "quarantined" if (folder / ".quarantined").exists() else "done" if done else "pending"
    out: dict[str, Any] = {"upload_id": uid, "site_id": site, "station": meta.get("station"),
                           "state": state, "verdicts": []}
    ids = (done or {}).get("verdict_ids")
    if isinstance(ids, list):  # every verdict of the upload, error verdicts without a series included
        for vid in ids:
            rec = await _db(_st().store.get_verdict, vid) if isinstance(vid, int) else None
            if rec is not None and rec["site_id"] == site:
                out["verdicts"].append({"verdict_id": rec["id"], **rec["verdict"]})
        return _json(out)
    for series_uid in (done or {}).get("series_uids") or []:  # markers written before verdict_ids existed
        if series_uid:
            recs = [r for r in await _db(_st().store.verdicts_for_series, series_uid) if r["site_id"] == site]
            if recs:
                out["verdicts"].append({"verdict_id": recs[0]["id"], **recs[0]["verdict"]})
    return _json(out)


async def api_verdicts(request: Request) -> Response:
    q = request.query_params
    rows = await _db(_st().store.recent_verdicts, site_id=_site_scope(request, q.get("site") or None),
                     station=q.get("station") or None,
                     limit=_int_param(request, "limit", 50, 1, 1000))
    return _json({"verdicts": rows})


async def api_verdict(request: Request) -> Response:
    _, rec = await _owned_verdict(request)
    return _json(rec)


async def api_station_latest(request: Request) -> Response:
    station = request.path_params["station"]
    rec = await _db(_st().store.latest_verdict, station, _site_scope(request, None))
    if rec is None:
        raise ApiError(404, "NOT_FOUND", f"no verdict yet for station {station}")
    return _json({"console": console_view(rec), **rec})


async def api_station_events(request: Request) -> Response:
    station = request.path_params["station"]
    store = _st().store
    site = _site_scope(request, None)

    async def stream() -> Any:
        last_id: str | None = "-"
        yield "retry: 1000\n\n"
        while True:
            seen = notifier.version  # read before the query so a change during it is not lost
            key = await _db(store.latest_verdict_key, station, site)  # "id:final": a confirmation is news too
            if key != last_id:
                last_id = key
                view = console_view(await _db(store.latest_verdict, station, site)) if key is not None else None
                vid = key.split(":")[0] if key else 0
                yield f"id: {vid}\nevent: verdict\ndata: {json.dumps(view)}\n\n"
            if not await notifier.wait(seen, SSE_KEEPALIVE_S):
                if await request.is_disconnected():
                    return
                yield ": keepalive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def api_queries(request: Request) -> Response:
    q = request.query_params
    try:
        rows = await _db(_st().store.list_queries, site_id=_site_scope(request, q.get("site") or None),
                         state=q.get("state") or None,
                         series_uid=q.get("series_uid") or None, limit=_int_param(request, "limit", 500, 1, 5000))
    except ScanQCError as exc:
        raise ApiError(400, "BAD_REQUEST", exc.message) from None
    return _json({"queries": rows})


async def api_query_open(request: Request) -> Response:
    _need(request, roles=("monitor", "admin"))  # queries are opened by the central team
    data = await _body(request)
    vid = _body_int(data, "verdict_id")
    check = str(data.get("check") or "").strip()
    if not check:
        raise ApiError(400, "BAD_REQUEST", "check (the check the query is about) is required")
    try:
        qid = await _db(_st().store.open_query, vid, check, message=data.get("message"), action=data.get("action"))
    except ScanQCError as exc:
        raise ApiError(404, exc.code.value, exc.message) from None
    return _json(await _db(_st().store.get_query, qid), 201)


async def api_query(request: Request) -> Response:
    qid = _path_int(request, "id")
    rec = await _db(_st().store.get_query, qid)
    if rec is None:
        raise ApiError(404, "NOT_FOUND", f"query {qid} not found")
    _own(request, rec["site_id"], f"query {qid}")
    return _json(rec)


async def _transition(request: Request, kind: str) -> Response:
    qid = _path_int(request, "id")
    data = await _body(request)
    by = str(data.get("by") or "").strip()[:100] or None
    store = _st().store
    p = principal_of(request)
    if kind == "answer":  # the site answers its own queries; closing is the central team's
        current = await _db(store.get_query, qid)
        if current is None:
            raise ApiError(404, "NOT_FOUND", f"query {qid} not found")
        _own(request, current["site_id"], f"query {qid}")
        if p.role == "monitor":
            raise ApiError(403, "FORBIDDEN", "the site answers its queries; a monitor token closes them")
    else:
        _need(request, roles=("monitor", "admin"))
    try:
        if kind == "answer":
            answer = str(data.get("answer") or "").strip()
            if not answer:
                raise ApiError(400, "BAD_REQUEST", "answer (what the site did) is required")
            rec = await _db(store.answer_query, qid, answer, by=by)
        else:
            rec = await _db(store.resolve_query, qid, str(data.get("resolution") or "").strip() or None, by=by)
    except QueryStateError as exc:
        raise ApiError(409, "INVALID_STATE", exc.message) from None
    except ScanQCError as exc:
        raise ApiError(404 if exc.code.value == "NOT_FOUND" else 400, exc.code.value, exc.message) from None
    return _json(rec)


async def api_query_answer(request: Request) -> Response:
    return await _transition(request, "answer")


async def api_query_close(request: Request) -> Response:
    return await _transition(request, "close")


async def api_dashboard(request: Request) -> Response:
    site = _site_scope(request, request.query_params.get("site") or None)
    data = await _db(_st().store.site_metrics, days=_int_param(request, "days", 90, 1, 3650),
                     recurring_min=_int_param(request, "recurring_min", 3, 1, 1000), site_id=site)
    data["scanners"] = await _db(_st().store.scanner_overview, site_id=site)
    return _json(data)


async def api_scanners(request: Request) -> Response:
    """Scanner qualification: each scanner's state and its recent phantom results (docs/phantom-qc.md)."""
    site = _site_scope(request, request.query_params.get("site") or None)
    return _json({"scanners": await _db(_st().store.scanner_overview, site_id=site,
                                        points=_int_param(request, "points", 20, 1, 500))})


async def api_studies(request: Request) -> Response:
    """Studies and their guidelines. A site token sees only its own site's study (and never guideline file
    paths, which name files on the server); monitor and admin see all."""
    st = _st()
    p = principal_of(request)
    seen = await _db(st.store.list_studies)
    if p.sees_all_sites:
        return _json({"configured": st.settings.studies, "site_studies": st.settings.site_studies,
                      "default_study": st.settings.default_study, "seen": seen})
    site = p.site_id or st.settings.default_site
    mine = await _db(st.processor.study_for, site, None)
    own = {mine} if mine else set()
    return _json({"configured": {s: "(configured)" for s in st.settings.studies if s in own},
                  "site_studies": {site: mine} if mine else {}, "default_study": mine,
                  "seen": [{k: v for k, v in r.items() if k != "guideline"} for r in seen if r["id"] in own]})


# -- admin: sites, studies/guidelines, tokens ----------------------------------------------------------
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _ident(value: Any, what: str) -> str:
    v = str(value or "").strip()
    if not v or len(v) > 64 or not set(v) <= _ID_CHARS:
        raise ApiError(400, "BAD_REQUEST", f"{what} must be 1-64 characters of letters, digits, '.', '_', '-'")
    return v


async def api_admin_sites(request: Request) -> Response:
    _need(request, roles=("admin",))
    st = _st()
    if request.method == "GET":
        return _json({"sites": await _db(st.store.sites), "ae_sites": st.settings.ae_sites})
    data = await _body(request)
    site = _ident(data.get("id"), "id")
    study = str(data.get("study") or "").strip() or None
    if study:
        study = _ident(study, "study")
        try:
            await _db(st.processor.guideline_for, study)
        except ScanQCError as exc:
            raise ApiError(400, exc.code.value, exc.message) from None
    name = str(data.get("name") or "").strip()[:200] or None
    return _json(await _db(st.store.upsert_site, site, name, study), 200)


async def api_admin_studies(request: Request) -> Response:
    _need(request, roles=("admin",))
    return _json({"studies": await _db(_st().store.list_studies), "configured": _st().settings.studies})


async def api_admin_study_put(request: Request) -> Response:
    """Set a study's acquisition guideline: a YAML document, or JSON ``{"guideline": {...}}``."""
    _need(request, roles=("admin",))
    from scanqc.guideline import parse_guideline

    st = _st()
    study = _ident(request.path_params["id"], "study id")
    if study in st.settings.studies:
        raise ApiError(409, "CONFIGURED", f"study {study} is defined in the settings file; change it there")
    raw = await request.body()
    try:
        import yaml

        doc = yaml.safe_load(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ApiError(400, "BAD_GUIDELINE", f"guideline is not valid YAML/JSON ({type(exc).__name__})") from None
    if isinstance(doc, dict) and isinstance(doc.get("guideline"), dict):
        doc = doc["guideline"]
    if isinstance(doc, dict):
        doc = {**doc, "study": study}
    try:
        g = parse_guideline(doc, f"study {study}")  # type: ignore[arg-type]
    except ScanQCError as exc:
        raise ApiError(400, exc.code.value, exc.message) from None
    await _db(st.store.upsert_study, study, MANAGED_REF, g.title or None, g.raw)
    st.processor.forget_guideline(study)
    return _json({"id": study, "title": g.title, "series": [r.id for r in g.series]}, 200)


async def api_admin_tokens(request: Request) -> Response:
    _need(request, roles=("admin",))
    st = _st()
    if request.method == "GET":
        return _json({"tokens": await _db(st.store.list_tokens)})
    data = await _body(request)
    role = str(data.get("role") or "").strip()
    if role not in ROLES:
        raise ApiError(400, "BAD_REQUEST", f"role must be one of {list(ROLES)}")
    site = _ident(data["site"], "site") if data.get("site") else None
    unit = _ident(data["unit"], "unit") if data.get("unit") else None
    try:
        tid, token = await _db(create_token, st.store, st.settings, role, site,
                               str(data.get("label") or "")[:200] or None, unit_id=unit)
    except ValueError as exc:
        raise ApiError(400, "BAD_REQUEST", str(exc)) from None
    st.gate.invalidate()
    return _json({"id": tid, "role": role, "site_id": site, "unit_id": unit, "token": token,
                  "note": "shown once: only a keyed hash is stored"}, 201)


async def api_admin_token_revoke(request: Request) -> Response:
    _need(request, roles=("admin",))
    tid = _path_int(request, "id")
    if not await _db(_st().store.revoke_token, tid):
        raise ApiError(404, "NOT_FOUND", f"no active token {tid}")
    _st().gate.invalidate()
    return _json({"id": tid, "revoked": True})


# -- login for the pages (the token goes into an HttpOnly cookie, never into a URL) -------------------
def _safe_next(raw: Any) -> str:
    n = str(raw or "/dashboard")
    return n if n.startswith("/") and not n.startswith("//") and "\\" not in n else "/dashboard"


async def page_login(request: Request) -> Response:
    nxt = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return HTMLResponse(pages.login_page(nxt, None))
    data = await _body(request)
    token = str(data.get("token") or "").strip()
    nxt = _safe_next(data.get("next") or nxt)
    p = await asyncio.to_thread(_st().gate.verify, token) if token else None
    if p is None:
        return HTMLResponse(pages.login_page(nxt, "Unknown or revoked token."), status_code=401)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                    max_age=12 * 3600)
    return resp


async def page_logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


# -- pages ------------------------------------------------------------------------------------------
async def page_console(request: Request) -> Response:
    station = request.path_params["station"]
    rec = await _db(_st().store.latest_verdict, station, _site_scope(request, None))
    return HTMLResponse(pages.console_page(station, console_view(rec)))


async def page_console_index(request: Request) -> Response:
    rows = await _db(_st().store.recent_verdicts, site_id=_site_scope(request, None), limit=500)
    stations = sorted({r["station"] for r in rows})
    return HTMLResponse(pages.console_index(stations))


async def page_dashboard(request: Request) -> Response:
    site = _site_scope(request, None)
    data = await _db(_st().store.site_metrics, days=_int_param(request, "days", 90, 1, 3650),
                     recurring_min=_int_param(request, "recurring_min", 3, 1, 1000), site_id=site)
    # mobile units, as stations of their site (scanqc.serving.unit_sync)
    data["units"] = await _db(_st().store.unit_metrics, stale_hours=_st().settings.unit_stale_hours, site_id=site)
    data["unit_stale_hours"] = _st().settings.unit_stale_hours
    scanners = await _db(_st().store.scanner_overview, site_id=site)
    return HTMLResponse(pages.dashboard_page(data, scanners))


async def page_home(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=307)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(error_body(exc.code, exc.message), exc.status)


from scanqc.serving import unit_sync  # noqa: E402  (its handlers use the helpers above)

app = Starlette(
    routes=[
        *unit_sync.ROUTES,
        Route("/api/status", api_status),
        Route("/api/series/{uid}", api_series),
        Route("/api/series/{uid}/sr", api_series_sr),
        Route("/api/uploads/{id}", api_upload),
        Route("/api/verdicts", api_verdicts),
        Route("/api/verdicts/{id}", api_verdict),
        Route("/api/verdicts/{id}/preview.png", api_verdict_preview),
        Route("/api/stations/{station}/latest", api_station_latest),
        Route("/api/stations/{station}/events", api_station_events),
        Route("/api/queries", api_queries, methods=["GET"]),
        Route("/api/queries", api_query_open, methods=["POST"]),
        Route("/api/queries/{id}", api_query),
        Route("/api/queries/{id}/answer", api_query_answer, methods=["POST"]),
        Route("/api/queries/{id}/close", api_query_close, methods=["POST"]),
        Route("/api/dashboard", api_dashboard),
        Route("/api/scanners", api_scanners),
        Route("/api/studies", api_studies),
        Route("/console", page_console_index),
        Route("/console/{station}", page_console),
        Route("/dashboard", page_dashboard),
        Route("/ui", page_home),
        Route("/login", page_login, methods=["GET", "POST"]),
        Route("/logout", page_logout),
        Route("/api/admin/sites", api_admin_sites, methods=["GET", "POST"]),
        Route("/api/admin/studies", api_admin_studies),
        Route("/api/admin/studies/{id}", api_admin_study_put, methods=["PUT"]),
        Route("/api/admin/tokens", api_admin_tokens, methods=["GET", "POST"]),
        Route("/api/admin/tokens/{id}", api_admin_token_revoke, methods=["DELETE"]),
    ],
    exception_handlers={ApiError: _api_error},
)
