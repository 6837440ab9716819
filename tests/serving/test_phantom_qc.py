"""Scanner qualification in the service path (Processor + a real SQLite store, real DICOM files): drift over
ten simulated weeks, expiry, patient-series warnings, and phantoms kept out of patient QC figures."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from scanqc.datasets.phantoms import PhantomFaults, write_phantom
from scanqc.serving.config import Settings
from scanqc.serving.processing import Processor
from scanqc.serving.store import PhantomResult, Scanner, Store
from sqlalchemy import func, select

from scanqc.verdict import Verdict

from .conftest import ct_series

GUIDELINE = """\
study: QA-ST
modality: CT
series:
  - id: ct
    label: CT
    slice_thickness_mm: [1.0, 5.0]
phantom:
  interval_days: 14
"""
SCANNER = {"manufacturer": "ACME", "model": "Scanomat 64", "serial": "SN-VAN-1", "software": "VB20"}
# Water HU per simulated week: stable for three weeks, then +0.8 HU a week (tolerance +-7 HU never crossed).
DRIFT_HU = [0.0, 0.0, 0.0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.8, 5.6]
EXPECTED_DRIFT_WEEK = 8  # six results each higher than the last (Nelson rule 3): weeks 3..8


def week_date(week: int, today: dt.date | None = None) -> dt.datetime:
    """Week 10 is yesterday, week 1 nine weeks before it (so week 10's qualification is current)."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    d = today - dt.timedelta(days=1 + 7 * (len(DRIFT_HU) - week))
    return dt.datetime.combine(d, dt.time(7, 30))


PG_URL = os.environ.get("SCANQC_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def proc(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A Processor on SQLite, and on PostgreSQL when SCANQC_TEST_PG_URL is set (a shared database: every
    site and station name carries this run's ``proc.tag``)."""
    if request.param == "postgresql" and not PG_URL:
        pytest.skip("SCANQC_TEST_PG_URL not set")
    tag = uuid.uuid4().hex[:8]
    g = tmp_path / "qa.yaml"
    g.write_text(GUIDELINE)
    settings = Settings(data_dir=tmp_path / "data", salt="s", studies={"QA-ST": str(g)},
                        site_studies={f"van1-{tag}": "QA-ST", f"site9-{tag}": "QA-ST"},
                        db_url=PG_URL if request.param == "postgresql" else "")
    store = Store(settings.db_url)
    p = Processor(settings, store)
    p.tag = tag  # type: ignore[attr-defined]
    yield p
    store.close()


def send(proc: Processor, folder: Path, station: str, site: str = "van1") -> Verdict:
    tag = proc.tag  # type: ignore[attr-defined]
    [v] = proc.process_folder(folder, site_id=f"{site}-{tag}", station=f"{station}-{tag}", source="dicom",
                              received_at=dt.datetime.now(dt.timezone.utc))
    return v


def drift_weeks(proc: Processor, tmp: Path, station: str = "VAN1", site: str = "van1") -> list[Verdict]:
    out = []
    for week, hu in enumerate(DRIFT_HU, start=1):
        folder = tmp / f"{station}-w{week}"
        # One noise realisation for every week, so the measured change is the injected one.
        write_phantom("ct_water", folder, PhantomFaults(hu_offset=hu), seed=11, acquired=week_date(week), **SCANNER)
        out.append(send(proc, folder, station, site))
    return out


def test_drift_warning_at_the_expected_week(proc: Processor, tmp_path: Path) -> None:
    verdicts = drift_weeks(proc, tmp_path)
    statuses = [v.checks["phantom"].status for v in verdicts]
    assert statuses == ["pass"] * (EXPECTED_DRIFT_WEEK - 1) + ["warn"] * (len(DRIFT_HU) - EXPECTED_DRIFT_WEEK + 1)
    first = verdicts[EXPECTED_DRIFT_WEEK - 1].checks["phantom"]
    [finding] = [d for d in first.extra["drift"] if d["rule"] == "trend"]
    assert finding["measurement"] == "water_hu" and finding["direction"] == "rising"
    assert "water CT number rising over 6 phantoms" in first.message and first.action.startswith("Schedule service")
    assert all(v.kind == "phantom" and set(v.checks) == {"integrity", "phantom"} for v in verdicts)
    [sc] = proc.store.scanner_overview(site_id=f"van1-{proc.tag}")  # type: ignore[attr-defined]
    assert sc["state"] == "drift" and sc["phantoms"] == len(DRIFT_HU) and sc["serial"] == "SN-VAN-1"
    pts = sc["measurements"]["water_hu"]["points"]
    assert [p["status"] for p in pts].index("warn") == EXPECTED_DRIFT_WEEK - 1
    assert sc["measurements"]["water_hu"]["tolerance"] == [-7.0, 7.0]
    # Re-sending week 10 (same series) does not count it twice in its own history.
    again = send(proc, tmp_path / "VAN1-w10", "VAN1")
    assert again.checks["phantom"].extra["history_points"] == len(DRIFT_HU) - 1


def test_qualification_expiry_failure_and_patient_warnings(proc: Processor, tmp_path: Path) -> None:
    today = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    write_phantom("ct_water", tmp_path / "old", seed=1, acquired=today - dt.timedelta(days=40), **SCANNER)
    assert send(proc, tmp_path / "old", "CT_OLD", "site9").status == "pass"
    write_phantom("ct_water", tmp_path / "ok", seed=2, acquired=today - dt.timedelta(days=2), **SCANNER)
    assert send(proc, tmp_path / "ok", "CT_OK", "site9").status == "pass"
    write_phantom("ct_water", tmp_path / "bad", PhantomFaults(hu_offset=11.0), seed=3,
                  acquired=today - dt.timedelta(days=1), **SCANNER)
    bad = send(proc, tmp_path / "bad", "CT_BAD", "site9")
    assert bad.status == "fail" and "water CT number" in bad.checks["phantom"].action
    tag = proc.tag  # type: ignore[attr-defined]
    site = f"site9-{tag}"
    states = {s["station"]: s["state"] for s in proc.store.scanner_overview(site_id=site)}
    assert states == {f"CT_OLD-{tag}": "expired", f"CT_OK-{tag}": "qualified", f"CT_BAD-{tag}": "failed"}

    def patient(station: str, **hdr: Any) -> Verdict:
        folder = tmp_path / f"patient-{station}"
        ct_series(folder, description="AX CT", seed=len(station), header={**{
            "Manufacturer": SCANNER["manufacturer"], "ManufacturerModelName": SCANNER["model"],
            "DeviceSerialNumber": SCANNER["serial"], "SoftwareVersions": SCANNER["software"]}, **hdr})
        v = send(proc, folder, station, "site9")
        assert v.kind == "patient" and "phantom" not in v.checks
        return v

    q = patient("CT_OK").checks["scanner_qualification"]
    assert q.status == "pass" and "qualified until" in q.message
    q = patient("CT_OLD").checks["scanner_qualification"]
    assert q.status == "warn" and "expired" in q.message and "qualification phantom" in q.action
    q = patient("CT_BAD").checks["scanner_qualification"]
    assert q.status == "warn" and "failed" in q.message
    # A phantom sent without a study (default interval 30 days) 20 days ago: qualified on the dashboard, but this
    # study asks for one every 14 days, so its patient series warn.
    write_phantom("ct_water", tmp_path / "mid", seed=4, acquired=today - dt.timedelta(days=20), **SCANNER)
    assert send(proc, tmp_path / "mid", "CT_MID", "nostudy").status == "pass"
    assert [s["state"] for s in proc.store.scanner_overview(site_id=f"nostudy-{tag}")] == ["qualified"]
    q = patient("CT_MID").checks["scanner_qualification"]
    assert q.status == "warn" and "expired" in q.message and "every 14 days" in q.action
    # Same station, upgraded software: a new scanner record that has not qualified yet.
    q = patient("CT_OK", SoftwareVersions="VB30").checks["scanner_qualification"]
    assert q.status == "warn" and "no qualification phantom on record" in q.message

    # Phantoms never count in patient QC figures and open no series queries.
    m = proc.store.site_metrics(site_id=site)["sites"][site]
    assert m["series"] == 5 and m["verdicts"] == 5 and "phantom" not in m["deviation_rate"]
    assert all(q["check"] != "phantom" for q in proc.store.list_queries(site_id=site))
    with proc.store.session() as s:
        # the VB30 patient series made no scanner record
        assert s.scalar(select(func.count(Scanner.id)).where(Scanner.site_id == site)) == 3
        assert s.scalar(select(func.count(PhantomResult.id)).where(PhantomResult.site_id == site)) == 3


def test_migration_phantom_0001_downgrades_and_upgrades(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from scanqc.serving import store as store_mod
    from sqlalchemy import inspect

    st = Store(f"sqlite:///{tmp_path / 'm.sqlite'}")
    here = Path(store_mod.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here / "migrations"))

    def tables() -> tuple[set[str], set[str]]:
        insp = inspect(st.engine)
        return set(insp.get_table_names()), {c["name"] for c in insp.get_columns("verdicts")}

    t, cols = tables()
    assert {"scanners", "phantom_results"} <= t and "kind" in cols
    with st.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    t, cols = tables()
    assert not {"scanners", "phantom_results"} & t and "kind" not in cols
    store_mod.migrate(st.engine)
    t, cols = tables()
    assert {"scanners", "phantom_results"} <= t and "kind" in cols
    st.close()
