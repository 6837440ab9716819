"""Store, settings and Processor without a server: SQLite always, PostgreSQL when SCANQC_TEST_PG_URL is set.

CI can run the PostgreSQL variant with a service container, e.g. GitHub Actions
``services: postgres: {image: postgres:16, env: {POSTGRES_PASSWORD: pw}, ports: ["5432:5432"]}`` and
``SCANQC_TEST_PG_URL=postgresql+psycopg://postgres:pw@localhost:5432/postgres`` (needs ``psycopg``).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from scanqc.serving.config import Settings, load_settings
from scanqc.serving.processing import Processor
from scanqc.serving.store import CheckRow, QueryStateError, Store, VerdictRow
from sqlalchemy import select, update

from scanqc.errors import ScanQCError
from scanqc.verdict import CheckResult, Verdict

from .conftest import ct_series

PG_URL = os.environ.get("SCANQC_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        if not PG_URL:
            pytest.skip("SCANQC_TEST_PG_URL not set")
        s = Store(PG_URL)
    yield s
    s.close()


def _verdict(status: str = "fail", uid: str | None = None, thickness_fail: bool = True) -> Verdict:
    checks = {"integrity": CheckResult("pass", "ok")}
    if thickness_fail:
        checks["protocol"] = CheckResult("fail", "slice 8 mm", None, "Reconstruct at <= 5 mm",
                                         {"deviations": [{"field": "slice_thickness_mm", "severity": "fail"}]})
    return Verdict(input="x", series_uid=uid or f"1.2.3.{uuid.uuid4().int % 10**12}", modality="CT",
                   status=status, checks=checks)  # type: ignore[arg-type]


def test_save_and_query_lifecycle(store: Store) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    vid = store.save_verdict(_verdict(), site_id="s1", station="CT1", source="dicom",
                             received_at=now - dt.timedelta(seconds=2), patient_hash="h" * 32)
    rec = store.latest_verdict("CT1")
    assert rec is not None and rec["id"] == vid and rec["verdict"]["status"] == "fail"
    [q] = store.list_queries(site_id="s1", state="open")
    assert q["check"] == "protocol" and q["action"] == "Reconstruct at <= 5 mm"
    assert store.answer_query(q["id"], "redone", by="tech")["state"] == "answered"
    with pytest.raises(QueryStateError):
        store.answer_query(q["id"], "again")
    assert store.resolve_query(q["id"], "ok")["state"] == "closed"
    with pytest.raises(ScanQCError):
        store.resolve_query(10**9)
    with pytest.raises(ScanQCError):
        store.list_queries(state="bogus")


def test_site_metrics(store: Store) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    uid = f"9.9.{uuid.uuid4().int % 10**12}"
    site = f"m{uuid.uuid4().hex[:6]}"  # PostgreSQL keeps rows between runs
    store.save_verdict(_verdict("fail", uid), site_id=site, station="A", source="http", received_at=now)
    store.save_verdict(_verdict("pass", uid, thickness_fail=False), site_id=site, station="A", source="http",
                       received_at=now)  # a repeat of the same series: not first pass
    for _ in range(2):
        store.save_verdict(_verdict("fail"), site_id=site, station="A", source="http", received_at=now)
    store.save_verdict(_verdict("pass", thickness_fail=False), site_id=site, station="A", source="http",
                       received_at=now)
    m = store.site_metrics(recurring_min=3, site_id=site)["sites"][site]
    assert m["series"] == 4 and m["verdicts"] == 5
    assert m["first_pass_acceptance"] == 0.25
    assert m["recurring_deviations"] == [{"kind": "slice_thickness_mm", "series": 3}]
    assert m["open_queries"]["count"] == 3
    week = next(iter(m["deviation_rate"]["protocol"].values()))
    assert week["deviations"] == 3 and week["checked"] == 3
    assert m["turnaround_s"]["n"] == 5 and m["turnaround_s"]["median"] >= 0



def _reference_site_metrics(store: Store, *, days: int, recurring_min: int, now: dt.datetime,
                            site_id: str | None) -> dict[str, dict]:
    """The dashboard figures computed row by row from every verdict and check of the window (what
    site_metrics did before it counted in SQL); open queries left out."""
    since = now - dt.timedelta(days=days)
    with store.session() as s:
        rows = s.execute(select(VerdictRow.id, VerdictRow.site_id, VerdictRow.series_uid, VerdictRow.status,
                                VerdictRow.received_at, VerdictRow.verdict_at)
                         .where(VerdictRow.verdict_at >= since).order_by(VerdictRow.id)).all()
        checks = s.execute(select(CheckRow.verdict_id, CheckRow.name, CheckRow.status, CheckRow.kinds)
                           .where(CheckRow.verdict_id.in_([r[0] for r in rows] or [-1]))).all()
    rows = [r for r in rows if site_id in (None, r[1])]
    by_id = {r[0]: r for r in rows}
    out: dict[str, dict] = {}
    seen: set = set()
    kind_series: dict = defaultdict(set)
    for vid, site, uid, status, received, at in rows:
        m = out.setdefault(site, {"series": 0, "verdicts": 0, "ok": 0, "status_counts": {}, "ta": [],
                                  "dev": defaultdict(lambda: defaultdict(lambda: [0, 0]))})
        m["verdicts"] += 1
        m["status_counts"][status] = m["status_counts"].get(status, 0) + 1
        if (site, uid or f"#{vid}") not in seen:
            seen.add((site, uid or f"#{vid}"))
            m["series"] += 1
            m["ok"] += status in ("pass", "warn")
        if received is not None:
            m["ta"].append(max((at - received).total_seconds(), 0.0))
    for vid, name, status, kinds in checks:
        if vid not in by_id or status == "skipped":
            continue
        _, site, uid, _, _, at = by_id[vid]
        y, w, _ = at.isocalendar()
        cell = out[site]["dev"][name][f"{y}-W{w:02d}"]
        cell[1] += 1
        if status in ("warn", "fail"):
            cell[0] += 1
            for k in (kinds or name).split(","):
                kind_series[(site, k)].add(uid or f"#{vid}")
    result = {}
    for site, m in out.items():
        ta = sorted(m["ta"])
        result[site] = {
            "series": m["series"], "verdicts": m["verdicts"], "first_pass_acceptance": round(m["ok"] / m["series"], 4),
            "status_counts": m["status_counts"],
            "turnaround_s": {"n": len(ta), "median": round(statistics.median(ta), 3) if ta else None,
                             "p95": round(ta[min(len(ta) - 1, int(0.95 * len(ta)))], 3) if ta else None},
            "deviation_rate": {c: {wk: {"deviations": d, "checked": n, "rate": round(d / n, 4)}
                                   for wk, (d, n) in sorted(weeks.items())} for c, weeks in sorted(m["dev"].items())},
            "recurring_deviations": sorted(({"kind": k, "series": len(v)} for (st, k), v in kind_series.items()
                                            if st == site and len(v) >= recurring_min),
                                           key=lambda x: (-x["series"], x["kind"])),
        }
    return result


def test_site_metrics_counted_in_sql_match_row_by_row(store: Store) -> None:
    """site_metrics counts in the database (GROUP BY) so its memory does not grow with the data: same
    figures as row by row, on repeats, series without UID, skipped checks and several weeks."""
    rng = random.Random(7)
    tag = uuid.uuid4().hex[:6]  # PostgreSQL keeps rows between runs
    sites = [f"q{tag}{i}" for i in range(3)]
    uids = [f"7.7.{tag}.{i}" for i in range(25)] + [None, ""]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    for _ in range(150):
        checks = {}
        for name in ("integrity", "protocol", "motion"):
            st = rng.choice(["pass", "pass", "warn", "fail", "skipped"])
            extra = ({"deviations": [{"field": rng.choice(["slice_thickness_mm", "fov_mm"]), "severity": "fail"}]}
                     if name == "protocol" and rng.random() < 0.7 else {})
            checks[name] = CheckResult(st, "m", None, "act" if st in ("warn", "fail") else None, extra)
        v = Verdict(input="x", series_uid=rng.choice(uids), modality="CT",
                    status=rng.choice(["pass", "warn", "fail", "error"]), checks=checks)  # type: ignore[arg-type]
        received = None if rng.random() < 0.2 else now - dt.timedelta(seconds=rng.random() * 50)
        vid = store.save_verdict(v, site_id=rng.choice(sites), station="A", source="http", received_at=received,
                                 open_queries=False)
        at = now - dt.timedelta(hours=rng.random() * 24 * 40)
        with store.session(write=True) as s:
            s.execute(update(VerdictRow).where(VerdictRow.id == vid).values(
                verdict_at=at, received_at=None if received is None else at - dt.timedelta(seconds=rng.random() * 9)))
    for days, site, rmin in [(90, None, 1), (7, sites[0], 2), (30, sites[1], 3), (1, sites[2], 1)]:
        got = store.site_metrics(days=days, recurring_min=rmin, now=now, site_id=site)["sites"]
        want = _reference_site_metrics(store, days=days, recurring_min=rmin, now=now, site_id=site)
        got = {k: {f: x for f, x in m.items() if f != "open_queries"} for k, m in got.items() if k in sites}
        assert got == {k: m for k, m in want.items() if k in sites}, (days, site, rmin)


def test_site_metrics_memory_does_not_carry_the_rows(tmp_path: Path) -> None:
    """1000 series x 8 checks: loading the rows (the former implementation) peaked at ~5 MiB of Python
    memory, growing with the data and with it the API worker's RSS under load; counting in SQL ~0.5 MiB."""
    import tracemalloc

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    try:
        with store.session(write=True) as s:
            store.ensure_site(s, "s1")
            for i in range(1000):
                v = VerdictRow(series_uid=f"1.2.840.99.{i}.{uuid.uuid4().int % 10**18}", site_id="s1", station="A",
                               source="http", status="pass", received_at=now, verdict_at=now, verdict={})
                v.checks.extend(CheckRow(name=f"check{k}", status="pass") for k in range(8))
                s.add(v)
        store.site_metrics(days=90)
        tracemalloc.start()
        try:
            m = store.site_metrics(days=90)["sites"]["s1"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert m["series"] == 1000 and m["deviation_rate"]["check0"]
    assert peak < 2 * 2**20, f"site_metrics peaked at {peak / 2**20:.1f} MiB for 1000 series"

def test_settings_env_yaml_and_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("ae_sites: {CT1: site01}\nstudies: {ONC: abdomen_ct}\nsalt: abc\n")
    monkeypatch.setenv("SCANQC_DICOM_PORT", "11999")
    monkeypatch.setenv("SCANQC_SITE_STUDIES", '{"site01": "ONC"}')
    s = load_settings(cfg, data_dir=tmp_path)
    assert s.dicom_port == 11999 and s.ae_sites == {"CT1": "site01"} and s.site_for_ae("CT1") == "site01"
    assert s.study_for("site01") == "ONC" and s.guideline_ref("ONC") == "abdomen_ct"
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("scanqc.db")
    assert s.hash_identifier("P1") == Settings(salt="abc", data_dir=tmp_path).hash_identifier(" P1 ")
    assert s.hash_identifier("P1") != Settings(salt="other", data_dir=tmp_path).hash_identifier("P1")
    assert s.hash_identifier("") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_key: 1\n")
    with pytest.raises(ScanQCError):
        load_settings(bad)
    monkeypatch.setenv("SCANQC_HTTP_PORT", "abc")
    with pytest.raises(ScanQCError):
        load_settings()


def test_processor_stores_before_notifying(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, salt="s")
    store = Store(settings.db_url)
    proc = Processor(settings, store)
    seen = []
    proc.listeners.append(lambda ev: seen.append(store.get_verdict(ev.verdict_id)))
    files = ct_series(tmp_path / "s", header={"PatientID": "PX-1"})
    [v] = proc.process_folder(tmp_path / "s", site_id=None, station="T", source="dicom",
                              received_at=dt.datetime.now(dt.timezone.utc))
    assert seen and seen[0] is not None and seen[0]["verdict"]["series_uid"] == v.series_uid
    assert seen[0]["site_id"] == "unassigned"
    [bad] = proc.process_folder(tmp_path / "s", site_id=None, station="T", source="http", study_id="NOPE",
                                received_at=dt.datetime.now(dt.timezone.utc))
    assert bad.status == "error" and bad.error["code"] == "BAD_GUIDELINE"
    assert files and proc.in_flight() == 0
    store.close()
