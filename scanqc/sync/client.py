"""``scanqc sync``: send the outbox to the central service, resumably and idempotently (stdlib urllib).

Per pending record (one series verdict), oldest first:

1. ``PUT /api/sync/records/{key}`` with the manifest (verdict, model versions, laptop check time, clock
   offset, file list). The server answers ``complete`` (it already has it: nothing more is sent) or
   ``receiving`` with the files it still lacks.
2. ``PUT /api/sync/records/{key}/files/{sha256}`` for each missing file, gzip-compressed when that helps;
   the server verifies the hash and writes it durably (a cut-off body is discarded, never half-kept).
3. ``POST /api/sync/records/{key}/commit``: the server stores the unit's verdict once (the key is unique);
   only then is the local record marked synced. A crash between the two just repeats step 1, which
   answers ``complete``.

The clock offset (server time minus laptop time, from ``POST /api/sync/hello``) goes with every record:
the laptop's timestamps are kept as they were and the centre sees how far off the laptop was.
Connection errors, 5xx, 408 and 429 are retried with exponential backoff; 401/403 stop the sync.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.sync.outbox import Outbox, Record, iso_utc, utc_now

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_CHUNK = 64 * 1024


class SyncError(ScanQCError):
    """The sync stopped: the server is unreachable (after retries) or refused the unit."""


@dataclass
class SyncReport:
    server: str
    unit_id: str
    site_id: str | None = None
    clock_offset_s: float | None = None
    synced: int = 0  # records the server stored in this run
    already: int = 0  # records the server already had (an earlier, interrupted run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, "CODE: message"), kept pending
    files_sent: int = 0
    bytes_sent: int = 0  # on the wire (after compression)
    bytes_raw: int = 0
    disagreements: int = 0  # the centre's re-check disagreed with the unit's verdict
    backlog: int = 0  # still pending after this run

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        self.status, self.body = status, body
        self.code = str(err.get("code") or f"HTTP_{status}")
        self.message = str(err.get("message") or "")
        super().__init__(f"{status} {self.code}: {self.message}")


class SyncClient:
    """JSON + file uploads with retries and an optional bandwidth cap (``max_kbps``, kilobytes per second)."""

    def __init__(self, server: str, token: str | None, *, timeout_s: float = 60.0, retries: int = 5,
                 backoff_s: float = 1.0, max_kbps: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.max_kbps = max_kbps
        self.sleep = sleep

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "scanqc-sync"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return {**h, **(extra or {})}

    def _body(self, data: bytes) -> bytes | Iterator[bytes]:
        if not self.max_kbps:
            return data
        rate = self.max_kbps * 1024

        def chunks() -> Iterator[bytes]:
            t0 = time.monotonic()
            for i in range(0, len(data), _CHUNK):
                part = data[i:i + _CHUNK]
                yield part
                ahead = (i + len(part)) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        return chunks()

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One call with retries; raises :class:`HttpError` for a 4xx and SyncError when unreachable."""
        if json_body is not None:
            data = json.dumps(json_body, default=str).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        last = ""
        for attempt in range(self.retries):
            hdrs = self._headers(headers)
            if data is not None:
                hdrs["Content-Length"] = str(len(data))
            req = urllib.request.Request(self.server + path, data=self._body(data) if data is not None else None,
                                         headers=hdrs, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    raw = r.read()
                    return json.loads(raw) if raw else {}
            except urllib.error.HTTPError as exc:
                try:
                    body = json.loads(exc.read() or b"{}")
                except (ValueError, OSError):
                    body = {}
                err = HttpError(exc.code, body if isinstance(body, dict) else {})
                if exc.code not in _RETRY_STATUS:
                    raise err from None
                last = str(err)
            except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, reset mid-body, timeout
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}"
            if attempt + 1 < self.retries:
                delay = min(self.backoff_s * 2 ** attempt, 60.0) * random.uniform(0.8, 1.2)
                self.sleep(delay)
        raise SyncError(ErrorCode.SYNC_UNREACHABLE,
                        f"{self.server}: no answer after {self.retries} attempt(s) ({last}); nothing is lost, "
                        "run `scanqc sync` again when the network is back")


def _refused(exc: HttpError, server: str) -> SyncError:
    return SyncError(ErrorCode.SYNC_REFUSED, f"{server} refused the sync: {exc.status} {exc.code}: {exc.message}")


def sync(outbox: Outbox, client: SyncClient, *, progress: Callable[[str, Record | None], None] | None = None,
         limit: int | None = None) -> SyncReport:
    """Send every pending record; returns what happened. Raises SyncError (unreachable / refused)."""
    with _single_run(outbox.root):
        return _sync(outbox, client, progress or (lambda msg, rec: None), limit)


@contextlib.contextmanager
def _single_run(root: Path) -> Iterator[None]:
    """One `scanqc sync` per outbox at a time (two would upload the same files twice)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the server's unique keys still keep verdicts single
        yield
        return
    with open(root / "sync.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ScanQCError(ErrorCode.USAGE, f"another `scanqc sync` is running for {root}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sync(outbox: Outbox, client: SyncClient, progress: Callable[[str, Record | None], None],
          limit: int | None) -> SyncReport:
    unit = outbox.unit_id
    site = outbox.get("site")
    report = SyncReport(server=client.server, unit_id=unit)
    pending = outbox.pending()
    t0 = utc_now()
    try:
        hello = client.request("POST", "/api/sync/hello", json_body={
            "unit_id": unit, "site": site, "backlog": len(pending), "unit_time": iso_utc(t0)})
    except HttpError as exc:
        raise _refused(exc, client.server) from None
    t1 = utc_now()
    try:
        server_time = dt.datetime.fromisoformat(str(hello["server_time"]).replace("Z", "+00:00"))
        report.clock_offset_s = round((server_time - (t0 + (t1 - t0) / 2)).total_seconds(), 3)
    except (KeyError, ValueError, TypeError):
        report.clock_offset_s = None
    report.site_id = hello.get("site_id")
    progress(f"connected to {client.server} as unit {unit} (site {report.site_id}); clock offset "
             f"{report.clock_offset_s} s; {len(pending)} to send", None)
    for rec in pending[:limit] if limit else pending:
        try:
            _send_record(outbox, client, rec, report, site, progress)
        except HttpError as exc:
            if exc.status in (401, 403):
                raise _refused(exc, client.server) from None
            outbox.mark_failed(rec.key, f"{exc.code}: {exc.message}")
            report.failed.append((rec.key, f"{exc.code}: {exc.message}"))
            progress(f"refused {rec.key[:12]}: {exc.code}: {exc.message}", rec)
        except OSError as exc:  # a kept file was deleted on the laptop: say so, send the others
            msg = f"{ErrorCode.NOT_FOUND.value}: kept file unreadable ({type(exc).__name__}: {exc.strerror})"
            outbox.mark_failed(rec.key, msg)
            report.failed.append((rec.key, msg))
            progress(f"skipped {rec.key[:12]}: {msg}", rec)
    report.backlog = outbox.counts()["pending"]
    with contextlib.suppress(HttpError):
        client.request("POST", "/api/sync/done", json_body={"unit_id": unit, "backlog": report.backlog,
                                                           "clock_offset_s": report.clock_offset_s})
    return report


def _send_record(outbox: Outbox, client: SyncClient, rec: Record, report: SyncReport, site: str | None,
                 progress: Callable[[str, Record | None], None]) -> None:
    path = f"/api/sync/records/{rec.key}"
    state = client.request("PUT", path, json_body=rec.manifest(report.clock_offset_s, site))
    if state.get("state") == "complete":
        outbox.mark_synced(rec.key, state.get("verdict_id"))
        report.already += 1
        progress(f"{rec.key[:12]} already on the server", rec)
        return
    wanted = set(state.get("missing") or [])
    for f in rec.files if rec.stored else []:
        if f["sha256"] not in wanted:
            continue
        raw = outbox.stored_file(rec.key, f["sha256"], f["suffix"]).read_bytes()
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        headers = {"Content-Type": "application/octet-stream"}
        body = raw
        if len(packed) < 0.9 * len(raw):
            body, headers["Content-Encoding"] = packed, "gzip"
        client.request("PUT", f"{path}/files/{f['sha256']}", data=body, headers=headers)
        wanted.discard(f["sha256"])
        report.files_sent += 1
        report.bytes_sent += len(body)
        report.bytes_raw += len(raw)
    done = client.request("POST", f"{path}/commit", json_body={})
    outbox.mark_synced(rec.key, done.get("verdict_id"))
    report.synced += 1
    if done.get("disagreement"):
        report.disagreements += 1
    progress(f"{rec.key[:12]} stored as verdict {done.get('verdict_id')}", rec)
