"""API tokens, roles, and the ASGI gate in front of every route (docs/security.md).

- Tokens are ``sqc_`` + 256 random bits, shown once by ``scanqc tokens create``; the database keeps only
  HMAC-SHA256(deployment salt, token), so a copy of the database cannot be used to call the API.
- Roles: ``site`` (bound to one site: submit and read that site's data only), ``monitor`` (central team:
  reads every site, the dashboard and queries, opens/closes queries, cannot submit), ``admin`` (everything,
  plus sites, studies/guidelines and tokens), ``unit`` (a mobile unit, bound to one site and one unit id:
  ``/api/sync/*`` only, docs/mobile.md).
- Clients send ``Authorization: Bearer <token>``; browsers log in once at ``/login`` (the token goes into an
  HttpOnly, SameSite=Strict cookie; never into a URL, where access logs would record it).
- ``auth: auto`` (default) requires a token as soon as one exists or when HTTP listens beyond loopback, so
  ``scanqc serve`` on 127.0.0.1 with no tokens stays the open embedded demo, and says so in its banner.

:class:`SecurityMiddleware` also bounds request bodies while they stream (413 ``TOO_LARGE`` without
buffering), stops clients that stall mid-body (408 ``REQUEST_TIMEOUT``), and turns any non-coded error
response from the framework into ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from scanqc.errors import ScanQCError

log = logging.getLogger("scanqc.serving")

ROLES = ("site", "monitor", "admin", "unit")
TOKEN_PREFIX = "sqc_"
COOKIE = "scanqc_token"
JSON_BODY_LIMIT = 1 << 20  # every body except an upload is a small JSON/form document
_CACHE_TTL_S = 5.0  # token lookups and "do tokens exist?" are cached this long (revocation delay)
_CACHE_MAX = 10_000

# Paths anyone may read: probes and metrics (Kubernetes, Prometheus), the API docs, the login page.
_PUBLIC_EXACT = {"/readyz", "/livez", "/healthz", "/metrics", "/", "/docs.json", "/schema.json", "/login",
                 "/logout", "/favicon.ico"}
_PUBLIC_PREFIX = ("/static_content/", "/assets/")
_PAGES = ("/console", "/dashboard", "/ui")
SYNC_PREFIX = "/api/sync/"


def _is_sync_file(path: str) -> bool:
    """``PUT /api/sync/records/{key}/files/{sha256}``: one file of a unit's series (upload-sized body)."""
    return path.startswith(SYNC_PREFIX + "records/") and "/files/" in path


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str, salt: str) -> str:
    return hmac.new(salt.encode(), token.strip().encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``anonymous`` is the open demo mode (no tokens, loopback): it may do everything."""

    role: str
    site_id: str | None = None
    token_id: int | None = None
    anonymous: bool = False
    unit_id: str | None = None  # role "unit": the mobile unit this token identifies

    @property
    def can_submit(self) -> bool:
        return self.role in ("site", "admin")

    @property
    def sees_all_sites(self) -> bool:
        return self.role in ("monitor", "admin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


OPEN = Principal(role="admin", anonymous=True)


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Gate:
    """Token verification with a short in-process cache (one per worker)."""

    def __init__(self, settings: Any, store: Any) -> None:
        self.settings = settings
        self.store = store
        self._tokens: dict[str, tuple[float, Principal | None]] = {}
        self._count: tuple[float, int] = (0.0, 0)

    def required(self) -> bool:
        mode = self.settings.auth
        if mode == "required":
            return True
        if mode == "off":
            return False
        return not self.settings.loopback_only or self.token_count() > 0

    def token_count(self) -> int:
        t, n = self._count
        if time.monotonic() - t > _CACHE_TTL_S:
            n = self.store.active_token_count()
            self._count = (time.monotonic(), n)
        return n

    def mode_line(self) -> str:
        if self.required():
            return f"required ({self.token_count()} active token(s))"
        return "OFF (loopback demo, no tokens yet: `scanqc tokens create --role admin` turns it on)"

    def verify(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        h = hash_token(token, self.settings.salt)
        hit = self._tokens.get(h)
        if hit is not None and time.monotonic() - hit[0] < _CACHE_TTL_S:
            return hit[1]
        row = self.store.token_by_hash(h)
        p = None if row is None else Principal(role=row["role"], site_id=row["site_id"], token_id=row["id"],
                                               unit_id=row.get("unit_id"))
        if len(self._tokens) >= _CACHE_MAX:
            self._tokens.clear()
        self._tokens[h] = (time.monotonic(), p)
        return p

    def invalidate(self) -> None:
        self._tokens.clear()
        self._count = (0.0, 0)


def create_token(store: Any, settings: Any, role: str, site_id: str | None = None,
                 label: str | None = None, unit_id: str | None = None) -> tuple[int, str]:
    """Create a token; returns (id, clear token). The clear token is not stored anywhere."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {list(ROLES)}")
    if role in ("site", "unit") and not site_id:
        raise ValueError(f"a {role} token needs --site")
    if role not in ("site", "unit") and site_id:
        raise ValueError(f"a {role} token is not bound to a site (leave out --site)")
    if role == "unit" and not unit_id:
        raise ValueError("a unit token needs --unit (the mobile unit's id)")
    if role != "unit" and unit_id:
        raise ValueError(f"a {role} token is not bound to a unit (leave out --unit)")
    if unit_id and (len(unit_id) > 64 or unit_id.startswith(".")
                    or not all(c.isascii() and (c.isalnum() or c in "._-") for c in unit_id)):
        raise ValueError(f"unit id {unit_id!r} must be 1-64 letters, digits, '.', '_', '-'")
    token = new_token()
    try:
        tid = store.add_token(hash_token(token, settings.salt), token[len(TOKEN_PREFIX):][:8], role, site_id, label,
                              unit_id=unit_id)
    except ScanQCError as exc:  # the unit is registered to another site
        raise ValueError(exc.message) from None
    return tid, token


def _token_from_scope(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            v = value.decode("latin-1").strip()
            if v[:7].lower() == "bearer ":
                return v[7:].strip()
        elif name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == COOKIE and v:
                    return v
    return None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def coded(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *(headers or [])]}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


_STATUS_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 405: "METHOD_NOT_ALLOWED", 408: "REQUEST_TIMEOUT", 413: "TOO_LARGE", 415: "BAD_REQUEST",
                 422: "BAD_REQUEST", 429: "TOO_MANY_REQUESTS", 500: "INTERNAL", 503: "UNAVAILABLE",
                 504: "TIMEOUT"}


class SecurityMiddleware:
    """Authentication, streaming body limits, body idle timeout, coded error bodies."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from scanqc.serving import web  # the service binds its state there once its store exists

        state = web.current_state()
        path = scope.get("path", "")
        if state is None:
            if path in _PUBLIC_EXACT or path.startswith(_PUBLIC_PREFIX):
                await self.app(scope, receive, send)
            else:
                for m in coded(503, "NOT_READY", "service is starting"):
                    await send(m)
            return
        gate: Gate = state.gate
        # -- who is calling ---------------------------------------------------------------------
        if not (path in _PUBLIC_EXACT or path.startswith(_PUBLIC_PREFIX)):
            try:
                principal = await asyncio.to_thread(self._authenticate, gate, scope)
            except AuthError as exc:
                if scope.get("method") == "GET" and path.startswith(_PAGES):
                    await _redirect_login(send, scope)
                else:
                    hdr = [(b"www-authenticate", b'Bearer realm="scanqc"')] if exc.status == 401 else []
                    for m in coded(exc.status, exc.code, exc.message, hdr):
                        await send(m)
                return
            if principal.role == "unit" and not path.startswith(SYNC_PREFIX):
                for m in coded(403, "FORBIDDEN", f"a unit token can only sync ({SYNC_PREFIX}...)"):
                    await send(m)
                return
            scope.setdefault("state", {})["principal"] = principal
        # -- body limits ------------------------------------------------------------------------
        settings = state.settings
        limit = settings.max_upload_bytes if path == "/api/check" or _is_sync_file(path) else JSON_BODY_LIMIT
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                for m in coded(400, "BAD_REQUEST", "invalid Content-Length"):
                    await send(m)
                return
            if n > limit:
                for m in coded(413, "TOO_LARGE", f"request body of {n} bytes exceeds the {limit}-byte limit"):
                    await send(m)
                return
        if path == "/api/check" and scope.get("method") == "POST":
            # Only multipart reaches the framework: its JSON fallback answers 500 with the body (maybe
            # patient data) echoed into the log.
            ctype = (_header(scope, b"content-type") or "").lower()
            multipart = ctype.startswith("multipart/form-data") and "boundary=" in ctype
            if not (multipart or ctype.startswith("application/x-www-form-urlencoded")):
                for m in coded(415, "BAD_REQUEST", "send the upload as multipart/form-data (field 'files')"):
                    await send(m)
                return
        guard = _BodyGuard(receive, send, limit, settings.request_idle_timeout_s,
                           rewrite=path.startswith("/api/"))
        if path == "/api/check" and scope.get("method") == "POST" and state.service is not None:
            await _upload(state, scope, guard)
        else:
            await self.app(scope, guard.receive, guard.send)
        await guard.finish()

    @staticmethod
    def _authenticate(gate: Gate, scope: dict[str, Any]) -> Principal:
        token = _token_from_scope(scope)
        if token is None:
            if not gate.required():
                return OPEN
            raise AuthError(401, "UNAUTHENTICATED", "an API token is required: Authorization: Bearer <token>")
        p = gate.verify(token)
        if p is None:
            if not gate.required() and _token_from_header_only(scope) is None:
                return OPEN  # a stale cookie in demo mode is harmless
            raise AuthError(401, "BAD_TOKEN", "the API token is unknown or revoked")
        return p


_UPLOAD_FIELDS = ("station", "site", "study", "visit", "modality", "complete_study")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


async def _upload(state: Any, scope: dict[str, Any], guard: _BodyGuard) -> None:
    """POST /api/check: parse the multipart body here (bounded, spooled to disk) and hand it to the service."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import ClientDisconnect, Request

    async def answer(status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        await guard.send({"type": "http.response.start", "status": status,
                          "headers": [(b"content-type", b"application/json"),
                                      (b"content-length", str(len(data)).encode())]})
        await guard.send({"type": "http.response.body", "body": data, "more_body": False})

    def bad(message: str) -> dict[str, Any]:
        return {"error": {"code": "BAD_REQUEST", "message": message}}

    request = Request(scope, guard.receive)
    limits = state.processor.limits
    try:
        form = await request.form(max_files=limits.max_files, max_fields=len(_UPLOAD_FIELDS) + 10,
                                  max_part_size=64 * 1024)
    except MultiPartException as exc:
        await _drain_then(guard, answer, 400, bad(f"malformed multipart body ({exc.message})"))
        return
    except HTTPException as exc:  # Starlette wraps the parser's MultiPartException in HTTPException(400)
        await _drain_then(guard, answer, 400, bad(f"malformed multipart body ({str(exc.detail)[:200]})"))
        return
    except ClientDisconnect:
        return  # the guard has answered (413/408) or the client went away
    except (ValueError, UnicodeDecodeError, KeyError, AssertionError) as exc:
        await _drain_then(guard, answer, 400, bad(f"malformed multipart body ({type(exc).__name__})"))
        return
    try:
        files, fields = [], {}
        for key, value in form.multi_items():
            if key == "files":
                if not isinstance(value, UploadFile):
                    await answer(400, bad("'files' parts must be files (Content-Disposition with a filename)"))
                    return
                files.append(value)
            elif key in _UPLOAD_FIELDS:
                if not isinstance(value, str) or len(value) > 200 or any(ord(c) < 32 for c in value):
                    await answer(400, bad(f"form field {key!r} must be a short line of text"))
                    return
                fields[key] = value
        flag = str(fields.get("complete_study", "")).strip().lower()
        if flag not in _TRUE + _FALSE:
            await answer(400, bad("complete_study must be true or false"))
            return
        fields["complete_study"] = flag in _TRUE
        principal = (scope.get("state") or {}).get("principal", OPEN)
        status, body = await state.service.handle_upload(principal, files, fields)
        await answer(status, body)
    finally:
        await form.close()


async def _drain_then(guard: _BodyGuard, answer: Any, status: int, body: dict[str, Any]) -> None:
    """Read (and drop) what is left of a refused request body, then answer: the connection then stays
    usable for the client's next request (keep-alive) instead of being reset mid-body."""
    try:
        while not guard.body_done and not guard.aborted:
            msg = await guard.receive()
            if msg.get("type") != "http.request":
                break
    except Exception:  # the body is being refused anyway; answering is what matters
        pass
    if not guard.aborted:
        await answer(status, body)


def _token_from_header_only(scope: dict[str, Any]) -> str | None:
    v = _header(scope, b"authorization")
    return v if v and v[:7].lower() == "bearer " else None


async def _redirect_login(send: Any, scope: dict[str, Any]) -> None:
    from urllib.parse import quote

    target = "/login?next=" + quote(scope.get("path", "/"), safe="/")
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", target.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _BodyGuard:
    """Wraps receive/send: counts body bytes as they stream, answers 413/408 itself when a limit is hit
    (the app then sees a disconnect and its own response is dropped), and rewrites error responses that
    are not already ``{"error": {"code", ...}}``."""

    def __init__(self, receive: Any, send: Any, limit: int, idle_s: float, *, rewrite: bool) -> None:
        self._receive, self._send = receive, send
        self.limit, self.idle_s, self.rewrite = limit, idle_s, rewrite
        self.seen = 0
        self.body_done = False
        self.aborted = False
        self.started = False
        self._held: dict[str, Any] | None = None
        self._held_body = bytearray()

    async def _abort(self, status: int, code: str, message: str) -> dict[str, Any]:
        self.aborted = True
        if not self.started:
            self.started = True
            for m in coded(status, code, message, [(b"connection", b"close")]):
                await self._send(m)
        return {"type": "http.disconnect"}

    async def receive(self) -> dict[str, Any]:
        if self.aborted:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()
        try:
            msg = await asyncio.wait_for(self._receive(), self.idle_s)
        except asyncio.TimeoutError:
            return await self._abort(408, "REQUEST_TIMEOUT",
                                     f"no request body received for {self.idle_s:g} s; send the upload again")
        if msg["type"] == "http.request":
            self.seen += len(msg.get("body", b""))
            if self.seen > self.limit:
                return await self._abort(413, "TOO_LARGE", f"request body exceeds the {self.limit}-byte limit")
            if not msg.get("more_body", False):
                self.body_done = True
        return msg

    async def send(self, msg: dict[str, Any]) -> None:
        if self.aborted:
            return
        if msg["type"] == "http.response.start":
            if self.rewrite and msg.get("status", 200) >= 400:
                self._held = msg
                return
            self.started = True
            await self._send(msg)
            return
        if msg["type"] == "http.response.body" and self._held is not None:
            self._held_body += msg.get("body", b"")
            if msg.get("more_body", False):
                return
            await self._flush_held()
            return
        await self._send(msg)

    async def _flush_held(self) -> None:
        held, body = self._held, bytes(self._held_body)
        self._held = None
        assert held is not None
        status = int(held.get("status", 500))
        if not _is_coded(body):
            text = body.decode("utf-8", "replace").strip()
            try:
                obj = json.loads(text)
                if isinstance(obj, dict) and isinstance(obj.get("error"), str):
                    text = obj["error"]
            except ValueError:
                pass
            if status >= 500:
                log.warning("framework error %d rewritten to a coded body: %s", status, text[:200])
            message = text[:500] or "request failed"
            code = _STATUS_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL")
            start, end = coded(status, code, message)
            self.started = True
            await self._send(start)
            await self._send(end)
            return
        self.started = True
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**held, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def finish(self) -> None:
        if self._held is not None:  # the app ended without completing its body
            await self._flush_held()


def _is_coded(body: bytes) -> bool:
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and "code" in err and "message" in err
