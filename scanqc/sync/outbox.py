"""The mobile unit's outbox: every verdict checked on the laptop, kept durably until the centre has it.

One SQLite file (stdlib ``sqlite3``, WAL, ``synchronous=FULL``: a committed record is fsynced) under the
unit directory, ``$SCANQC_UNIT_DIR`` or ``$XDG_DATA_HOME/scanqc/unit`` (``~/.local/share/scanqc/unit``).

Each record is one series verdict with a stable key, ``sha256(unit id, SeriesInstanceUID, sorted
SOPInstanceUIDs, content hash)``, where the content hash is the sha256 of the sorted per-file sha256s. The
same data checked twice on the same unit is the same key, so it is recorded (and synced) once; the server
recomputes the key from the manifest and refuses one that does not match.

Optionally the series' files are kept too (``keep``: ``verdicts`` only, ``failing`` = verdicts + the files
of failing/error series, ``all``), copied under ``series/<key>/<sha256><suffix>`` and fsynced *before* the
record that points at them is committed (the receiver's rule: acknowledged means on disk).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.io.durable import atomic_write, fsync_dir
from scanqc.verdict import Verdict

UNIT_DIR_ENV = "SCANQC_UNIT_DIR"
TOKEN_ENV = "SCANQC_UNIT_TOKEN"
KEEP_MODES = ("verdicts", "failing", "all")
DEFAULT_KEEP = "failing"
# Stored/uploaded file names keep only a recognised suffix: client file names can carry patient names.
FILE_SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm", ".ima")
_MAX_FALLBACK_FILES = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    unit_id TEXT NOT NULL,
    series_uid TEXT,
    sop_uids TEXT NOT NULL,          -- JSON list, sorted
    content_hash TEXT NOT NULL,
    files TEXT NOT NULL,             -- JSON [{sha256, size, suffix}]
    stored INTEGER NOT NULL,         -- 1: the files are under series/<key>/ and will be uploaded
    status TEXT NOT NULL,
    verdict TEXT NOT NULL,           -- the verdict contract (JSON)
    model_versions TEXT NOT NULL,    -- JSON {check: version}
    checked_at TEXT NOT NULL,        -- laptop clock, UTC ISO 8601
    acquired_at TEXT,                -- DICOM header (scanner local time unless it carries an offset)
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | synced
    synced_at TEXT,
    server_verdict_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS ix_records_state ON records (state, id);
CREATE TABLE IF NOT EXISTS seen (path TEXT PRIMARY KEY, signature TEXT NOT NULL, at TEXT NOT NULL);
"""


def unit_dir() -> Path:
    """Where the unit keeps its outbox: ``$SCANQC_UNIT_DIR``, else the XDG data dir (platformdirs' rule)."""
    env = os.environ.get(UNIT_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "scanqc" / "unit"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso_utc(t: dt.datetime) -> str:
    if t.tzinfo is None:
        return t.isoformat()
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(shas: Iterable[str]) -> str:
    """Order-independent hash of a series' bytes: sha256 of its files' sorted sha256s."""
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()


def series_key(unit_id: str, series_uid: str | None, sop_uids: Sequence[str], chash: str) -> str:
    """The idempotency key of one series verdict of one unit (the server recomputes it)."""
    payload = json.dumps([unit_id, series_uid or "", sorted(sop_uids), chash], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def file_suffix(name: str) -> str:
    lower = name.lower()
    return next((s for s in FILE_SUFFIXES if lower.endswith(s)), "")


def model_versions(verdict: dict[str, Any]) -> dict[str, str]:
    return {name: str(c["model_version"]) for name, c in (verdict.get("checks") or {}).items()
            if isinstance(c, dict) and c.get("model_version")}


@dataclass
class Record:
    key: str
    unit_id: str
    series_uid: str | None
    sop_uids: list[str]
    content_hash: str
    files: list[dict[str, Any]]
    stored: bool
    status: str
    verdict: dict[str, Any]
    model_versions: dict[str, str]
    checked_at: str
    acquired_at: str | None
    state: str
    synced_at: str | None = None
    server_verdict_id: int | None = None
    attempts: int = 0
    last_error: str | None = None

    @classmethod
    def _from_row(cls, r: sqlite3.Row) -> Record:
        return cls(key=r["key"], unit_id=r["unit_id"], series_uid=r["series_uid"],
                   sop_uids=json.loads(r["sop_uids"]), content_hash=r["content_hash"], files=json.loads(r["files"]),
                   stored=bool(r["stored"]), status=r["status"], verdict=json.loads(r["verdict"]),
                   model_versions=json.loads(r["model_versions"]), checked_at=r["checked_at"],
                   acquired_at=r["acquired_at"], state=r["state"], synced_at=r["synced_at"],
                   server_verdict_id=r["server_verdict_id"], attempts=r["attempts"], last_error=r["last_error"])

    def manifest(self, clock_offset_s: float | None, site: str | None = None) -> dict[str, Any]:
        """What the server gets for this record (``PUT /api/sync/records/{key}``).

        The verdict's ``input`` (a laptop path, which can name the patient) is replaced by a neutral name.
        """
        verdict = {**self.verdict, "input": f"unit:{self.unit_id}/{self.key[:16]}"}
        return {"key": self.key, "unit_id": self.unit_id, "site": site, "series_uid": self.series_uid,
                "sop_uids": self.sop_uids, "content_hash": self.content_hash,
                "files": self.files if self.stored else [], "verdict": verdict,
                "model_versions": self.model_versions, "checked_at": self.checked_at,
                "acquired_at": self.acquired_at, "clock_offset_s": clock_offset_s}


class Outbox:
    """The unit's durable local store (thread-safe; one SQLite connection)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else unit_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / "outbox.sqlite", timeout=30, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ScanQCError(ErrorCode.USAGE, f"unit directory {self.root}: cannot open the outbox ({exc})") from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # every commit fsynced: recorded means on disk
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- configuration -----------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM config WHERE name = ?", (name,)).fetchone()
        return default if row is None else row["value"]

    def set(self, name: str, value: str | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM config WHERE name = ?", (name,))
            else:
                db.execute("INSERT INTO config (name, value) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def configure(self, *, unit_id: str | None = None, server: str | None = None, keep: str | None = None,
                  site: str | None = None) -> None:
        if unit_id is not None:
            if not unit_id or len(unit_id) > 64 or not all(c.isalnum() or c in "._-" for c in unit_id):
                raise ScanQCError(ErrorCode.USAGE, f"unit id {unit_id!r} must be 1-64 letters, digits, '.', '_', '-'")
            current = self.get("unit_id")
            if current and current != unit_id and self.counts()["total"]:
                raise ScanQCError(ErrorCode.USAGE, f"this outbox belongs to unit {current} and holds records; "
                                                   "use another --unit-dir for another unit")
            self.set("unit_id", unit_id)
        if server is not None:
            if not server.startswith(("http://", "https://")):
                raise ScanQCError(ErrorCode.USAGE, f"server {server!r} must be an http:// or https:// URL")
            self.set("server", server.rstrip("/"))
        if keep is not None:
            if keep not in KEEP_MODES:
                raise ScanQCError(ErrorCode.USAGE, f"keep {keep!r} must be one of {list(KEEP_MODES)}")
            self.set("keep", keep)
        if site is not None:
            self.set("site", site or None)

    @property
    def unit_id(self) -> str:
        uid = self.get("unit_id")
        if not uid:
            raise ScanQCError(ErrorCode.USAGE, f"no unit id in {self.root}: run `scanqc unit init --unit NAME` first")
        return uid

    @property
    def keep(self) -> str:
        return self.get("keep", DEFAULT_KEEP) or DEFAULT_KEEP

    def token(self) -> str | None:
        """The unit's API token: ``$SCANQC_UNIT_TOKEN``, else the file ``token`` (mode 0600)."""
        env = os.environ.get(TOKEN_ENV, "").strip()
        if env:
            return env
        try:
            return (self.root / "token").read_text().strip() or None
        except OSError:
            return None

    def set_token(self, token: str) -> None:
        path = self.root / "token"
        atomic_write(path, token.strip().encode() + b"\n")
        os.chmod(path, 0o600)

    # -- records -----------------------------------------------------------------------------------
    def series_dir(self, key: str) -> Path:
        return self.root / "series" / key

    def record(self, verdict: Verdict, series: Any = None, *, checked_at: dt.datetime | None = None,
               acquired_at: dt.datetime | None = None) -> tuple[Record, bool]:
        """Keep one verdict (and, per ``keep``, its files); returns (record, created).

        The same data checked again on this unit is the same key: the first record stands (created=False).
        """
        d = verdict.to_dict()
        unit = self.unit_id
        files = _series_files(verdict, series)
        digests = [(p, file_sha256(p)) for p in files]
        chash = content_hash(sha for _, sha in digests) if digests else hashlib.sha256(
            json.dumps([verdict.input, verdict.series_uid]).encode()).hexdigest()
        sops = sorted({str(h.get("SOPInstanceUID")) for h in (getattr(series, "headers", None) or [])
                       if h.get("SOPInstanceUID")})
        key = series_key(unit, verdict.series_uid, sops, chash)
        existing = self.record_for(key)
        if existing is not None:
            return existing, False
        manifest_files = [{"sha256": sha, "size": p.stat().st_size, "suffix": file_suffix(p.name)}
                          for p, sha in digests]
        keep = self.keep
        stored = bool(digests) and (keep == "all" or (keep == "failing" and verdict.status in ("fail", "error")))
        if stored:
            self._store_files(key, digests)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO records (key, unit_id, series_uid, sop_uids, content_hash, files, stored, "
                "status, verdict, model_versions, checked_at, acquired_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, unit, verdict.series_uid, json.dumps(sops), chash, json.dumps(manifest_files), int(stored),
                 verdict.status, json.dumps(d, default=str), json.dumps(model_versions(d)),
                 iso_utc(checked_at or utc_now()), iso_utc(acquired_at) if acquired_at else None))
        rec = self.record_for(key)
        assert rec is not None
        return rec, True

    def _store_files(self, key: str, digests: list[tuple[Path, str]]) -> None:
        """Copy the series into ``series/<key>/`` durably: a partial copy never has the final name."""
        final = self.series_dir(key)
        if final.is_dir():
            return
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{key}.{uuid.uuid4().hex[:8]}.partial"  # per writer: `unit watch` and `unit check` may race
        tmp.mkdir()
        for src, sha in digests:
            dst = tmp / (sha + file_suffix(src.name))
            if dst.exists():  # the same bytes twice in one series
                continue
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
                fo.flush()
                os.fsync(fo.fileno())
        fsync_dir(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another writer kept the same series first: same key, same bytes
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
        fsync_dir(parent)

    def stored_file(self, key: str, sha: str, suffix: str) -> Path:
        return self.series_dir(key) / (sha + suffix)

    def record_for(self, key: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM records WHERE key = ?", (key,)).fetchone()
        return None if row is None else Record._from_row(row)

    def records(self, state: str | None = None, limit: int = 100_000) -> list[Record]:
        q, args = "SELECT * FROM records", ()
        if state:
            q, args = q + " WHERE state = ?", (state,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [Record._from_row(r) for r in rows]

    def pending(self) -> list[Record]:
        return self.records("pending")

    def mark_synced(self, key: str, server_verdict_id: int | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE records SET state = 'synced', synced_at = ?, server_verdict_id = ?, last_error = NULL "
                       "WHERE key = ?", (iso_utc(utc_now()), server_verdict_id, key))

    def mark_failed(self, key: str, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE records SET attempts = attempts + 1, last_error = ? WHERE key = ?", (error[:500], key))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM records GROUP BY state").fetchall()
        out = {"pending": 0, "synced": 0}
        out.update({r["state"]: r["n"] for r in rows})
        out["total"] = sum(r["n"] for r in rows)
        return out

    # -- the watched folder's memory (a restarted watcher does not check the same folder again) -----
    def seen(self, path: Path, signature: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT signature FROM seen WHERE path = ?", (str(path),)).fetchone()
        return row is not None and row["signature"] == signature

    def mark_seen(self, path: Path, signature: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO seen (path, signature, at) VALUES (?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                       "signature = excluded.signature, at = excluded.at", (str(path), signature, iso_utc(utc_now())))


def _series_files(verdict: Verdict, series: Any) -> list[Path]:
    """The files behind one verdict: the series' own files, else the input file, else the input folder's."""
    own = [Path(p) for p in (getattr(series, "files", None) or [])]
    if own and all(p.is_file() for p in own):
        return sorted(set(own))
    p = Path(verdict.input)
    if p.is_file():
        return [p]
    if p.is_dir():
        out = []
        for f in sorted(p.rglob("*")):
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
                out.append(f)
                if len(out) >= _MAX_FALLBACK_FILES:
                    break
        return out
    return []


class _SeriesTap:
    """Wraps the first check to keep each assembled Series (its headers name the SOPInstanceUIDs)."""

    def __init__(self, inner: Any, sink: dict[str, Any]) -> None:
        self.inner, self.name, self.sink = inner, inner.name, sink

    def __call__(self, series: Any, ctx: Any) -> Any:
        self.sink[series.series_uid or series.input] = series
        return self.inner(series, ctx)


def check_and_record(outbox: Outbox, path: Path | str, guideline: Any = None, *, visit: str | None = None,
                     modality_hint: str | None = None) -> list[tuple[Verdict, Record, bool]]:
    """Check one input offline (``scanqc.pipeline.check_path``, as ``scanqc check``) and record each verdict."""
    from scanqc.io.dicom import acquisition_datetime
    from scanqc.pipeline import check_path, default_checks

    taps: dict[str, Any] = {}
    checks = default_checks()
    tapped = [_SeriesTap(checks[0], taps), *checks[1:]]
    out = []
    for v in check_path(path, guideline, visit=visit, modality_hint=modality_hint, checks=tapped):
        s = taps.get(v.series_uid or v.input)
        rec, created = outbox.record(v, s, acquired_at=acquisition_datetime(s))
        out.append((v, rec, created))
    return out
