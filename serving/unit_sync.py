"""The central side of ``scanqc sync`` (docs/mobile.md): mobile units send what they checked offline.

Routes (mounted by :mod:`scanqc.serving.web`; a ``unit`` token may call nothing else):

- ``POST /api/sync/hello`` ``{unit_id, site, backlog, unit_time}``: who am I, server time (clock offset);
- ``PUT /api/sync/records/{key}``: a record's manifest; answers ``complete`` or ``receiving`` + missing files;
- ``PUT /api/sync/records/{key}/files/{sha256}``: one file (gzip ``Content-Encoding`` allowed), hash verified,
  written durably; a body cut off at any byte leaves nothing under the final name;
- ``POST /api/sync/records/{key}/commit``: stores the unit's verdict once (unique key + a conditional
  UPDATE), then optionally re-checks the series with the central models (``sync_recheck``); a different
  status is flagged as a disagreement, and both verdicts stay;
- ``POST /api/sync/done`` ``{backlog, clock_offset_s}``: the unit's last sync and backlog for the dashboard;
- ``GET /api/units``: units as stations of their site (monitor/admin: all; site token: its own);
  ``GET /api/units/{unit}/records?disagreements=1``: its records (offline verdict, model versions, laptop
  time, clock offset, re-check).

Identity: a unit token is bound to one site and one unit id (``scanqc tokens create --role unit --site S
--unit U``); a manifest naming another unit is 403 ``WRONG_UNIT``, another site 403 ``WRONG_SITE``; revoking
the token (``scanqc tokens revoke``) stops the unit's sync within the token cache's 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import uuid
import zlib
from pathlib import Path
from typing import Any

from scanqc.serving.store import SyncConflict, UnitSiteError, iso, utcnow
from scanqc.serving.web import ApiError, _body, _db, _ident, _json, _site_scope, _st, notifier, principal_of
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from scanqc.errors import ScanQCError
from scanqc.io.durable import fsync_dir
from scanqc.sync.outbox import FILE_SUFFIXES, content_hash, series_key
from scanqc.verdict import Verdict

log = logging.getLogger("scanqc.serving")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_SOPS = 100_000
_MAX_FILES = 20_000


def _who(request: Request, data: dict[str, Any]) -> tuple[str, str]:
    """(unit id, site id) the caller may write as: a unit token's own; an admin names them."""
    p = principal_of(request)
    asked_unit = str(data.get("unit_id") or "").strip() or None
    asked_site = str(data.get("site") or "").strip() or None
    if p.role == "unit":
        if asked_unit and asked_unit != p.unit_id:
            raise ApiError(403, "WRONG_UNIT", f"this token belongs to unit {p.unit_id}, not {asked_unit}")
        if asked_site and asked_site != p.site_id:
            raise ApiError(403, "WRONG_SITE", f"unit {p.unit_id} belongs to site {p.site_id}, not {asked_site}")
        return str(p.unit_id), str(p.site_id)
    if p.role != "admin":
        raise ApiError(403, "FORBIDDEN", f"a {p.role} token cannot sync; a mobile unit needs a unit token "
                                         "(scanqc tokens create --role unit --site SITE --unit UNIT)")
    unit = _ident(asked_unit, "unit_id")
    site = asked_site or _st().store.unit_site(unit) or _st().settings.default_site
    return unit, _ident(site, "site")


def _time(value: Any, what: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", f"{what} {str(value)[:40]!r} is not an ISO 8601 time") from None


def _key(request: Request) -> str:
    key = request.path_params["key"]
    if not _HEX64.match(key):
        raise ApiError(404, "NOT_FOUND", "a sync key is 64 lowercase hex digits")
    return key


def _folder(unit_id: str, key: str) -> Path:
    return _st().settings.incoming_dir / "sync" / unit_id / key


def _have(folder: Path, files: list[dict[str, Any]]) -> list[str]:
    return [f["sha256"] for f in files if not (folder / (f["sha256"] + f["suffix"])).is_file()]


async def _own_record(request: Request, key: str) -> tuple[dict[str, Any], str, str]:
    rec = await _db(_st().store.sync_record, key)
    if rec is None:
        raise ApiError(404, "NOT_FOUND", f"no sync record {key[:12]}: send its manifest first")
    p = principal_of(request)
    if p.role == "unit" and rec["unit_id"] != p.unit_id:
        raise ApiError(403, "WRONG_UNIT", f"record {key[:12]} belongs to another unit")
    if p.role not in ("unit", "admin"):
        raise ApiError(403, "FORBIDDEN", f"a {p.role} token cannot sync")
    return rec, rec["unit_id"], rec["site_id"]


# -- routes -------------------------------------------------------------------------------------------------
async def api_hello(request: Request) -> Response:
    data = await _body(request)
    unit, site = _who(request, data)
    backlog = data.get("backlog")
    try:
        await _db(_st().store.unit_hello, unit, site, int(backlog) if isinstance(backlog, int) else None)
    except UnitSiteError as exc:
        raise ApiError(403, "WRONG_SITE", exc.message) from None
    return _json({"unit_id": unit, "site_id": site, "server_time": iso(utcnow()),
                  "recheck": bool(_st().settings.sync_recheck)})


def _manifest(data: dict[str, Any], key: str, unit: str) -> dict[str, Any]:
    """Validate a manifest and check that its key is the one its content gives (no forged keys)."""
    if data.get("key") not in (None, key):
        raise ApiError(400, "BAD_KEY", "the manifest's key differs from the URL's")
    series_uid = data.get("series_uid")
    if series_uid is not None and (not isinstance(series_uid, str) or len(series_uid) > 128):
        raise ApiError(400, "BAD_REQUEST", "series_uid must be a UID string (at most 128 characters)")
    sops = data.get("sop_uids") or []
    if not isinstance(sops, list) or len(sops) > _MAX_SOPS or not all(isinstance(x, str) and len(x) <= 128
                                                                      for x in sops):
        raise ApiError(400, "BAD_REQUEST", "sop_uids must be a list of UID strings")
    chash = str(data.get("content_hash") or "")
    if not _HEX64.match(chash):
        raise ApiError(400, "BAD_REQUEST", "content_hash must be a sha256 (64 hex digits)")
    files = data.get("files") or []
    if not isinstance(files, list) or len(files) > _MAX_FILES:
        raise ApiError(400, "BAD_REQUEST", f"files must be a list of at most {_MAX_FILES} entries")
    clean = []
    for f in files:
        if not (isinstance(f, dict) and _HEX64.match(str(f.get("sha256") or "")) and isinstance(f.get("size"), int)
                and f["size"] >= 0 and f.get("suffix", "") in (*FILE_SUFFIXES, "")):
            raise ApiError(400, "BAD_REQUEST", "each file is {sha256: 64 hex, size: bytes, suffix: .dcm|.zip|...}")
        clean.append({"sha256": f["sha256"], "size": f["size"], "suffix": f.get("suffix", "")})
    if clean and content_hash(f["sha256"] for f in clean) != chash:
        raise ApiError(400, "BAD_KEY", "content_hash is not the hash of the listed files")
    if series_key(unit, series_uid, sops, chash) != key:
        raise ApiError(400, "BAD_KEY", f"key {key[:12]} is not sha256(unit {unit}, series, SOP UIDs, content hash)")
    verdict = data.get("verdict")
    try:
        if not isinstance(verdict, dict):
            raise TypeError("not an object")
        Verdict.from_dict(verdict)
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(400, "BAD_VERDICT", f"verdict is not a scanqc verdict ({type(exc).__name__}: {exc})") from None
    mv = data.get("model_versions") or {}
    offset = data.get("clock_offset_s")
    if not isinstance(mv, dict) or (offset is not None and not isinstance(offset, (int, float))):
        raise ApiError(400, "BAD_REQUEST", "model_versions must be an object and clock_offset_s a number")
    return {"key": key, "series_uid": series_uid, "sop_uids": sorted(sops), "content_hash": chash, "files": clean,
            "verdict": verdict, "model_versions": {str(k): str(v)[:64] for k, v in mv.items()},
            "checked_at": _time(data.get("checked_at"), "checked_at"),
            "acquired_at": _time(data.get("acquired_at"), "acquired_at"),
            "clock_offset_s": None if offset is None else float(offset)}


async def api_record_put(request: Request) -> Response:
    key = _key(request)
    data = await _body(request)
    unit, site = _who(request, data)
    m = _manifest(data, key, unit)
    try:
        rec = await _db(_st().store.sync_open, m, unit_id=unit, site_id=site)
    except UnitSiteError as exc:
        raise ApiError(403, "WRONG_SITE", exc.message) from None
    except SyncConflict as exc:
        raise ApiError(409, "CONFLICT", exc.message) from None
    if rec["state"] == "complete":
        return _json({"state": "complete", "verdict_id": rec["verdict_id"], "key": key})
    missing = await asyncio.to_thread(_have, _folder(unit, key), rec["files"])
    return _json({"state": "receiving", "key": key, "missing": missing})


async def api_file_put(request: Request) -> Response:
    key = _key(request)
    sha = request.path_params["sha"]
    rec, unit, _site = await _own_record(request, key)
    entry = next((f for f in rec["files"] if f["sha256"] == sha), None)
    if entry is None:
        raise ApiError(404, "NOT_FOUND", f"file {sha[:12]} is not in record {key[:12]}'s manifest")
    folder = _folder(unit, key)
    final = folder / (sha + entry["suffix"])
    if rec["state"] == "complete" or final.is_file():
        return _json({"sha256": sha, "stored": False, "note": "already held"})
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "BAD_REQUEST", "Content-Encoding must be gzip or identity")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    tmp = folder / f".{sha}.{uuid.uuid4().hex[:8]}.part"  # dot: never read as part of the series
    limit = int(entry["size"])
    h = hashlib.sha256()
    n = 0
    inflate = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    try:
        with open(tmp, "wb") as out:
            async for chunk in request.stream():
                data = chunk
                if inflate is not None:
                    # Bounded inflation: never more than the declared size (plus one byte to detect a lie).
                    data = inflate.decompress(chunk, limit - n + 1)
                    if inflate.unconsumed_tail:
                        raise ApiError(400, "BAD_CONTENT", f"file {sha[:12]} inflates beyond its {limit} bytes")
                n += len(data)
                if n > limit:
                    raise ApiError(400, "BAD_CONTENT", f"file {sha[:12]} is longer than its {limit} bytes")
                h.update(data)
                out.write(data)
            if inflate is not None and not inflate.eof:
                raise ApiError(400, "BAD_CONTENT", f"file {sha[:12]}: the gzip stream is incomplete")
            if h.hexdigest() != sha or n != limit:
                raise ApiError(400, "BAD_CONTENT", f"file {sha[:12]}: received {n} bytes that do not hash to it")
            out.flush()
            await asyncio.to_thread(os.fsync, out.fileno())
        os.replace(tmp, final)
        await asyncio.to_thread(fsync_dir, folder)
        for stale in folder.glob(f".{sha}.*.part"):  # left by an upload cut off by a server crash
            if stale != tmp:
                with contextlib.suppress(OSError):
                    stale.unlink()
    except ClientDisconnect:
        return Response(status_code=499)  # the unit will send the file again
    except zlib.error:
        raise ApiError(400, "BAD_CONTENT", f"file {sha[:12]}: not a valid gzip stream") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return _json({"sha256": sha, "stored": True}, 201)


async def api_commit(request: Request) -> Response:
    key = _key(request)
    rec, unit, site = await _own_record(request, key)
    st = _st()
    folder = _folder(unit, key)
    created = False
    if rec["state"] != "complete":
        missing = await asyncio.to_thread(_have, folder, rec["files"])
        if missing:
            raise ApiError(409, "INCOMPLETE", f"record {key[:12]}: {len(missing)} file(s) still missing; send them "
                                              "first")
        try:
            study = await asyncio.to_thread(st.processor.study_for, site, None)
        except Exception:
            study = None
        rec, created = await _db(st.store.sync_commit, key, study_id=study)
        if created:
            notifier.bump()  # consoles of this unit's station wake up
    if st.settings.sync_recheck and rec["files"] and rec["recheck_verdict_id"] is None:
        rec = await asyncio.to_thread(_recheck, st, rec, folder)
    return _json({"state": "complete", "key": key, "verdict_id": rec["verdict_id"], "created": created,
                  "recheck_status": rec["recheck_status"], "disagreement": rec["disagreement"]})


def _recheck(st: Any, rec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Check the synced series again with the central models; a failure to re-check loses nothing."""
    from scanqc.pipeline import check_path

    proc = st.processor
    try:
        study = proc.study_for(rec["site_id"], None)
        guideline = proc.guideline_for(study)
        verdicts = check_path(folder, guideline, limits=proc.limits, models=proc.models, infer=proc.infer)
    except ScanQCError as exc:
        log.warning("re-check of unit record %s failed: %s", rec["key"][:12], exc.code.value)
        return rec
    v = next((v for v in verdicts if v.series_uid == rec["series_uid"]), verdicts[0] if verdicts else None)
    if v is None:
        return rec
    v.input = f"unit:{rec['unit_id']}/{rec['key'][:16]}"
    return st.store.sync_recheck(rec["key"], v, study_id=study)


async def api_done(request: Request) -> Response:
    data = await _body(request)
    unit, site = _who(request, data)
    backlog, offset = data.get("backlog"), data.get("clock_offset_s")
    try:
        await _db(_st().store.unit_done, unit, site, backlog if isinstance(backlog, int) else None,
                  float(offset) if isinstance(offset, (int, float)) else None)
    except UnitSiteError as exc:
        raise ApiError(403, "WRONG_SITE", exc.message) from None
    return _json({"unit_id": unit, "site_id": site, "last_sync_at": iso(utcnow())})


async def api_units(request: Request) -> Response:
    st = _st()
    units = await _db(st.store.unit_metrics, stale_hours=st.settings.unit_stale_hours,
                      site_id=_site_scope(request, request.query_params.get("site") or None))
    return _json({"stale_hours": st.settings.unit_stale_hours, "units": units})


async def api_unit_records(request: Request) -> Response:
    st = _st()
    unit = request.path_params["unit"]
    site = await _db(st.store.unit_site, unit)
    if site is None:
        raise ApiError(404, "NOT_FOUND", f"no unit {unit}")
    _site_scope(request, site)  # a site token reads its own units only (403 WRONG_SITE)
    limit = request.query_params.get("limit", "200")
    if not limit.isdigit():
        raise ApiError(400, "BAD_REQUEST", f"limit={limit!r} is not a number")
    rows = await _db(st.store.unit_records, unit, limit=int(limit),
                     disagreements_only=request.query_params.get("disagreements") in ("1", "true"))
    return _json({"unit_id": unit, "site_id": site, "records": rows})


ROUTES = [
    Route("/api/sync/hello", api_hello, methods=["POST"]),
    Route("/api/sync/records/{key}", api_record_put, methods=["PUT"]),
    Route("/api/sync/records/{key}/files/{sha}", api_file_put, methods=["PUT"]),
    Route("/api/sync/records/{key}/commit", api_commit, methods=["POST"]),
    Route("/api/sync/done", api_done, methods=["POST"]),
    Route("/api/units", api_units),
    Route("/api/units/{unit}/records", api_unit_records),
]
