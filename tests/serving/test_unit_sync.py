"""Mobile-unit sync against the real web app + SecurityMiddleware served by uvicorn in a thread (a real HTTP
server, real SQLite store, real DICOM series checked offline). The subprocess `scanqc serve` variant with a
kill mid-upload is tests/serving/test_sync_e2e.py."""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scanqc.serving import web
from scanqc.serving.auth import SecurityMiddleware, create_token
from scanqc.serving.config import Settings
from scanqc.serving.processing import Processor
from scanqc.serving.store import Store, UnitRecord, VerdictRow
from sqlalchemy import func, select

from scanqc.errors import ScanQCError
from scanqc.guideline import load_guideline
from scanqc.sync.client import SyncClient, SyncError, sync
from scanqc.sync.outbox import Outbox, check_and_record

from .conftest import GUIDELINE, ct_series, free_port

uvicorn = pytest.importorskip("uvicorn")


@dataclass
class Central:
    base: str
    settings: Settings
    store: Store
    tokens: dict[str, str]

    def call(self, method: str, path: str, who: str | None, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        if who:
            h["Authorization"] = f"Bearer {self.tokens[who]}"
        req = urllib.request.Request(self.base + path, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def unit_verdicts(self) -> list[VerdictRow]:
        with self.store.session() as s:
            return list(s.scalars(select(VerdictRow).where(VerdictRow.source == "unit")))


def _serve(tmp_path: Path, *, with_tokens: bool = True, **overrides: Any) -> Iterator[Central]:
    guideline = tmp_path / "test_st.yaml"
    guideline.write_text(GUIDELINE)
    settings = Settings(data_dir=tmp_path / "central", salt="unit-sync-test",
                        auth="required" if with_tokens else "auto", studies={"TEST-ST": str(guideline)},
                        site_studies={"siteA": "TEST-ST"}, **overrides)
    store = Store(settings.db_url)
    tokens = {} if not with_tokens else {
        "vanA": create_token(store, settings, "unit", "siteA", "van A", unit_id="VAN-A")[1],
        "vanB": create_token(store, settings, "unit", "siteB", "van B", unit_id="VAN-B")[1],
        "siteB": create_token(store, settings, "site", "siteB")[1],
        "monitor": create_token(store, settings, "monitor")[1],
        "admin": create_token(store, settings, "admin")[1],
    }
    web.bind(web.AppState(settings=settings, store=store, processor=Processor(settings, store)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(SecurityMiddleware(web.app), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Central(f"http://127.0.0.1:{port}", settings, store, tokens)
    finally:
        server.should_exit = True
        t.join(10)
        web.bind(None)  # type: ignore[arg-type]
        store.close()


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    yield from _serve(tmp_path)


def _unit(tmp_path: Path, name: str, unit_id: str, n: int, keep: str = "all", thickness: float = 3.0) -> Outbox:
    ob = Outbox(tmp_path / name)
    ob.configure(unit_id=unit_id, keep=keep)
    for i in range(n):
        check_and_record(ob, ct_series(tmp_path / f"{name}-s{i}", seed=100 + i, thickness=thickness)[0].parent,
                         load_guideline("abdomen_ct"))
    return ob


def _client(central: Central, who: str) -> SyncClient:
    return SyncClient(central.base, central.tokens[who], retries=2, backoff_s=0.05)


def test_sync_is_idempotent_and_resumes_after_a_lost_answer(central: Central, tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 2)
    report = sync(ob, _client(central, "vanA"))
    assert (report.synced, report.already, report.failed, report.backlog) == (2, 0, [], 0)
    assert report.files_sent == 24 and report.bytes_sent < report.bytes_raw  # 12 instances each, gzip helped
    assert report.site_id == "siteA" and abs(report.clock_offset_s) < 5
    assert ob.counts() == {"pending": 0, "synced": 2, "total": 2}
    rows = central.unit_verdicts()
    assert len(rows) == 2 and {r.station for r in rows} == {"VAN-A"} and {r.site_id for r in rows} == {"siteA"}
    assert all(r.verdict["input"].startswith("unit:VAN-A/") for r in rows)  # no laptop path on the server
    # The answer to the last commit was lost (the laptop crashed before marking it): the record is pending
    # again locally; the next sync learns the server has it and sends nothing twice.
    with sqlite3.connect(ob.root / "outbox.sqlite") as db:
        db.execute("UPDATE records SET state = 'pending', synced_at = NULL")
    again = sync(ob, _client(central, "vanA"))
    assert (again.synced, again.already, again.files_sent) == (0, 2, 0)
    assert len(central.unit_verdicts()) == 2
    # a commit repeated (its answer lost on the way back) stores nothing more
    key = ob.records()[0].key
    for _ in range(2):
        status, body = central.call("POST", f"/api/sync/records/{key}/commit", "vanA", {})
        assert status == 200 and body["created"] is False
    assert central.store.sync_commit(key)[1] is False  # the store's own once-only gate (parallel commits)
    assert len(central.unit_verdicts()) == 2
    # and a third run has nothing to do
    assert sync(ob, _client(central, "vanA")).to_dict()["already"] == 0
    status, units = central.call("GET", "/api/units", "monitor")
    assert status == 200
    by_id = {u["unit_id"]: u for u in units["units"]}
    u = by_id["VAN-A"]
    assert by_id["VAN-B"]["stale"] is True and by_id["VAN-B"]["last_sync_at"] is None  # issued, never synced
    assert (u["unit_id"], u["site_id"], u["backlog"], u["records"], u["stale"]) == ("VAN-A", "siteA", 0, 2, False)


def test_a_cut_off_file_upload_leaves_nothing_and_the_next_sync_completes(central: Central, tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 1)
    (rec,) = ob.pending()
    status, body = central.call("PUT", f"/api/sync/records/{rec.key}", "vanA", rec.manifest(0.0))
    assert status == 200 and body["state"] == "receiving" and len(body["missing"]) == 12
    f = rec.files[0]
    raw = ob.stored_file(rec.key, f["sha256"], f["suffix"]).read_bytes()
    # half the body, then the connection drops (kill -9 of the laptop, network cut)
    host, port = central.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", f"/api/sync/records/{rec.key}/files/{f['sha256']}")
    conn.putheader("Authorization", f"Bearer {central.tokens['vanA']}")
    conn.putheader("Content-Length", str(len(raw)))
    conn.endheaders()
    conn.send(raw[: len(raw) // 2])
    conn.sock.close()
    folder = central.settings.incoming_dir / "sync" / "VAN-A" / rec.key
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(folder.glob(".*.part")):
        time.sleep(0.05)
    assert not (folder / (f["sha256"] + f["suffix"])).exists() and not list(folder.glob(".*.part"))
    # wrong bytes under a hash, and a gzip body inflating beyond the declared size: refused, nothing kept
    url = f"/api/sync/records/{rec.key}/files/{f['sha256']}"
    assert central.call("PUT", url, "vanA", raw[::-1])[1]["error"]["code"] == "BAD_CONTENT"
    bomb = gzip.compress(raw + b"\0" * 10_000_000)
    assert central.call("PUT", url, "vanA", bomb, {"Content-Encoding": "gzip"})[1]["error"]["code"] == "BAD_CONTENT"
    # commit before the files are there: 409, no verdict
    status, body = central.call("POST", f"/api/sync/records/{rec.key}/commit", "vanA", {})
    assert status == 409 and body["error"]["code"] == "INCOMPLETE" and central.unit_verdicts() == []
    report = sync(ob, _client(central, "vanA"))
    assert (report.synced, report.files_sent) == (1, 12)
    assert len(list(folder.glob("*.dcm"))) == 12 and len(central.unit_verdicts()) == 1


def test_forged_keys_and_changed_verdicts_are_refused_never_overwritten(central: Central, tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 1, keep="verdicts")
    (rec,) = ob.pending()
    m = rec.manifest(0.0)
    forged = "0" * 64
    status, body = central.call("PUT", f"/api/sync/records/{forged}", "vanA", {**m, "key": None})
    assert status == 400 and body["error"]["code"] == "BAD_KEY"
    assert sync(ob, _client(central, "vanA")).synced == 1
    (row,) = central.unit_verdicts()
    changed = {**m, "verdict": {**m["verdict"], "status": "pass", "checks": {}}}
    status, body = central.call("PUT", f"/api/sync/records/{rec.key}", "vanA", changed)
    assert status == 409 and body["error"]["code"] == "CONFLICT"
    (after,) = central.unit_verdicts()
    assert after.id == row.id and after.status == row.status == rec.status


def test_unit_tokens_are_bound_to_their_unit_and_site_and_revocation_stops_sync(central: Central,
                                                                                tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 1, keep="verdicts")
    (rec,) = ob.pending()
    path = f"/api/sync/records/{rec.key}"
    # unit A writing into site B, or as unit B: refused
    assert central.call("PUT", path, "vanA", rec.manifest(0.0, site="siteB"))[1]["error"]["code"] == "WRONG_SITE"
    status, body = central.call("POST", "/api/sync/hello", "vanA", {"unit_id": "VAN-B"})
    assert status == 403 and body["error"]["code"] == "WRONG_UNIT"
    # unit B's token presenting unit A's record: the key names VAN-A, so it cannot match unit B
    status, body = central.call("PUT", path, "vanB", {**rec.manifest(0.0), "unit_id": None})
    assert status == 400 and body["error"]["code"] == "BAD_KEY"
    # a site token cannot sync; a unit token can do nothing but sync
    assert central.call("POST", "/api/sync/hello", "siteB", {})[0] == 403
    assert central.call("GET", "/api/verdicts", "vanA")[0] == 403
    assert central.call("GET", "/dashboard", "vanA")[0] == 403
    # a unit id belongs to one site: no token for VAN-A at site B
    with pytest.raises(ValueError, match="belongs to site siteA"):
        create_token(central.store, central.settings, "unit", "siteB", unit_id="VAN-A")
    assert central.unit_verdicts() == []
    # revoked: the sync is refused (coded), nothing is lost locally
    (tid,) = [t["id"] for t in central.store.list_tokens() if t["unit_id"] == "VAN-A"]
    assert central.call("DELETE", f"/api/admin/tokens/{tid}", "admin")[0] == 200
    with pytest.raises(SyncError) as exc:
        sync(ob, _client(central, "vanA"))
    assert exc.value.code.value == "SYNC_REFUSED" and "BAD_TOKEN" in exc.value.message
    assert ob.counts()["pending"] == 1 and central.unit_verdicts() == []


def test_recheck_flags_a_disagreement_and_keeps_both_verdicts(tmp_path: Path) -> None:
    gen = _serve(tmp_path, sync_recheck=True)
    central = next(gen)
    try:
        # Offline the van had no guideline (protocol skipped); the centre re-checks with siteA's study,
        # whose slice-thickness rule (1-5 mm) an 8 mm series fails.
        ob2 = Outbox(tmp_path / "van")
        ob2.configure(unit_id="VAN-A", keep="all")
        ((v, _rec, _),) = check_and_record(ob2, ct_series(tmp_path / "thick", thickness=8.0, seed=8)[0].parent)
        assert v.status != "fail"
        report = sync(ob2, _client(central, "vanA"))
        assert report.synced == 1 and report.disagreements == 1
        with central.store.session() as s:
            (r,) = s.scalars(select(UnitRecord))
            sources = dict(s.execute(select(VerdictRow.source, func.count()).group_by(VerdictRow.source)).all())
            assert r.disagreement is True and r.recheck_status == "fail" and r.unit_status != "fail"
            assert sources == {"unit": 1, "recheck": 1}
        _, units = central.call("GET", "/api/units", "monitor")
        assert {u["unit_id"]: u["disagreements"] for u in units["units"]}["VAN-A"] == 1
        status, body = central.call("GET", "/api/units/VAN-A/records?disagreements=1", "monitor")
        (listed,) = body["records"]
        assert status == 200 and listed["recheck_status"] == "fail" and listed["unit_status"] == v.status
        assert listed["checked_at"] and listed["clock_offset_s"] is not None and listed["n_files"] == 12
        assert set(listed["model_versions"]) == {n for n, c in v.to_dict()["checks"].items() if c.get("model_version")}
        assert central.call("GET", "/api/units/VAN-A/records", "siteB")[1]["error"]["code"] == "WRONG_SITE"
        # the site's figures count the series once (the re-check is not a second series verdict)
        site = central.store.site_metrics()["sites"]["siteA"]
        assert (site["series"], site["verdicts"]) == (1, 1)
        ob2.close()
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def test_dashboard_flags_a_unit_not_synced_for_n_hours(central: Central, tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 1, keep="verdicts")
    sync(ob, _client(central, "vanA"))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=central.settings.unit_stale_hours + 1)
    (fresh,) = central.store.unit_metrics(stale_hours=24, site_id="siteA")
    (stale,) = central.store.unit_metrics(stale_hours=24, now=later, site_id="siteA")
    assert fresh["stale"] is False and stale["stale"] is True and stale["hours_since_sync"] > 24
    from scanqc.serving.pages import units_table

    html = units_table([stale], 24)
    assert 'class="unit stale" data-unit="VAN-A"' in html and "not synced for &gt; 24 h" in html


def test_unreachable_server_is_a_coded_error_and_keeps_the_backlog(tmp_path: Path) -> None:
    ob = _unit(tmp_path, "van", "VAN-A", 1, keep="verdicts")
    sleeps: list[float] = []
    client = SyncClient(f"http://127.0.0.1:{free_port()}", "sqc_x", retries=4, backoff_s=0.5, sleep=sleeps.append)
    with pytest.raises(ScanQCError) as exc:
        sync(ob, client)
    assert exc.value.code.value == "SYNC_UNREACHABLE" and ob.counts()["pending"] == 1
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]  # exponential backoff


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_parallel_commits_of_one_record_store_one_verdict(tmp_path: Path, backend: str) -> None:
    """Two syncs of the same unit racing (two laptops restored from one backup...): the conditional UPDATE lets
    exactly one commit store the verdict, on SQLite and on PostgreSQL (row lock)."""
    import os
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from scanqc.sync.outbox import series_key
    from scanqc.verdict import CheckResult, Verdict

    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else os.environ.get("SCANQC_TEST_PG_URL")
    if not url:
        pytest.skip("SCANQC_TEST_PG_URL not set")
    store = Store(url)
    try:
        uid = f"1.2.826.0.1.{uuid.uuid4().int % 10**20}"
        v = Verdict(input="x", series_uid=uid, modality="CT", status="pass",
                    checks={"integrity": CheckResult("pass", "ok")})
        key = series_key("VAN-P", uid, [], "a" * 64)
        m = {"key": key, "series_uid": uid, "sop_uids": [], "content_hash": "a" * 64, "files": [],
             "verdict": v.to_dict(), "model_versions": {}, "checked_at": dt.datetime.now(dt.timezone.utc),
             "acquired_at": None, "clock_offset_s": 0.5}
        with ThreadPoolExecutor(8) as pool:
            opened = list(pool.map(lambda _: store.sync_open(m, unit_id="VAN-P", site_id="siteP"), range(8)))
            created = list(pool.map(lambda _: store.sync_commit(key)[1], range(8)))
        assert {o["key"] for o in opened} == {key} and created.count(True) == 1
        assert len(store.verdicts_for_series(uid)) == 1
    finally:
        store.close()


def test_sync_killed_mid_upload_resumes_without_duplicates(central: Central, tmp_path: Path) -> None:
    """kill -9 of `scanqc sync` itself while a file is on the wire: the next run finishes, nothing twice."""
    import os
    import signal
    import subprocess
    import sys

    ob = _unit(tmp_path, "vanA", "VAN-A", 2)
    ob.configure(server=central.base)
    ob.set_token(central.tokens["vanA"])
    ob.close()
    env = {**os.environ, "SCANQC_UNIT_DIR": str(tmp_path / "vanA")}
    env.pop("SCANQC_UNIT_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "scanqc.cli", "sync", "--max-kbps", "8"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received = central.settings.incoming_dir / "sync" / "VAN-A"
    deadline = time.monotonic() + 60
    while not any(received.glob("*/*.dcm")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    ob = Outbox(tmp_path / "vanA")
    assert ob.counts()["pending"] == 2 and central.unit_verdicts() == []
    report = sync(ob, _client(central, "vanA"))
    assert report.synced == 2 and report.files_sent < 24  # what had arrived is not sent again
    assert len(central.unit_verdicts()) == 2 and ob.counts()["pending"] == 0


def test_a_kept_file_deleted_on_the_laptop_fails_that_record_only(central: Central, tmp_path: Path) -> None:
    ob = _unit(tmp_path, "vanA", "VAN-A", 2)
    first = ob.pending()[0]
    f = first.files[0]
    ob.stored_file(first.key, f["sha256"], f["suffix"]).unlink()
    report = sync(ob, _client(central, "vanA"))
    assert report.synced == 1 and [k for k, _ in report.failed] == [first.key]
    assert "NOT_FOUND" in report.failed[0][1] and ob.record_for(first.key).state == "pending"  # type: ignore[union-attr]
    assert len(central.unit_verdicts()) == 1


def test_a_laptop_clock_two_hours_slow_is_recorded_and_corrected(central: Central, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import scanqc.sync.client as client_mod
    import scanqc.sync.outbox as outbox_mod

    def slow_clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)

    monkeypatch.setattr(outbox_mod, "utc_now", slow_clock)  # the laptop's clock, at check and at sync
    monkeypatch.setattr(client_mod, "utc_now", slow_clock)
    ob = _unit(tmp_path, "vanA", "VAN-A", 1, keep="verdicts")
    report = sync(ob, _client(central, "vanA"))
    assert abs(report.clock_offset_s - 7200) < 30
    (row,) = central.unit_verdicts()
    (rec,) = central.store.unit_records("VAN-A")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    laptop = dt.datetime.fromisoformat(rec["checked_at"].replace("Z", ""))
    assert abs((now - laptop).total_seconds() - 7200) < 60  # kept as the laptop said
    assert abs((now - row.verdict_at).total_seconds()) < 60  # placed on the server's time line
    assert abs(rec["clock_offset_s"] - 7200) < 30
    (u,) = central.store.unit_metrics(site_id="siteA")
    assert abs(u["clock_offset_s"] - 7200) < 30


def test_open_demo_server_accepts_a_unit_without_token(tmp_path: Path) -> None:
    """`scanqc serve` on loopback with no tokens (the embedded demo): a unit syncs under the id it names."""
    gen = _serve(tmp_path, with_tokens=False)
    central = next(gen)
    try:
        ob = _unit(tmp_path, "van", "DEMO-VAN", 1, keep="verdicts")
        ob.configure(site="clinic1")
        report = sync(ob, SyncClient(central.base, None, retries=1))
        assert (report.synced, report.site_id) == (1, "clinic1")
        (row,) = central.unit_verdicts()
        assert (row.station, row.site_id) == ("DEMO-VAN", "clinic1")
    finally:
        with pytest.raises(StopIteration):
            next(gen)
