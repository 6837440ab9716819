"""Store, settings and Processor without a server: SQLite always, PostgreSQL when SCANQC_TEST_PG_URL is set.

CI can run the PostgreSQL variant with a service container, e.g. GitHub Actions
``services: postgres: {image: postgres:16, env: {POSTGRES_PASSWORD: pw}, ports: ["5432:5432"]}`` and
``SCANQC_TEST_PG_URL=postgresql+psycopg://postgres:pw@localhost:5432/postgres`` (needs ``psycopg``).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scanqc.serving.config import Settings, load_settings
from scanqc.serving.processing import Processor
from scanqc.serving.store import QueryStateError, Store

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
