"""Phantom QC through the one path: synthetic phantoms with injected faults, written as DICOM, read back by
``check_path``; each fault's measurement recovers the injected value and the verdict flips at the tolerance."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from scanqc.datasets.phantoms import PhantomFaults, write_phantom

from scanqc.checks.phantom import evaluate_drift
from scanqc.errors import ScanQCError
from scanqc.guideline import DriftRules, load_guideline, parse_guideline
from scanqc.io.dicom_write import write_dicom_series
from scanqc.measure.criteria import default_criteria
from scanqc.pipeline import check_path
from scanqc.verdict import Verdict

WHEN = dt.datetime(2026, 11, 2, 9, 30)


def run(tmp: Path, kind: str, faults: PhantomFaults, seed: int = 3, guideline: Any = None, **scanner: Any) -> Verdict:
    folder = tmp / f"{kind}-{abs(hash((faults, seed, tuple(scanner.items()))))}"
    write_phantom(kind, folder, faults, seed=seed, acquired=WHEN, **scanner)
    [v] = check_path(folder, guideline)
    return v


def values(v: Verdict) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in v.checks["phantom"].extra["measurements"]}


# (kind, fault, measurement, injected truth, stated tolerance). Tolerances are what the single-image ACR methods
# allow at the default noise (CT 5 HU, MR SNR 100): max errors over 12 seeds were 1.4 / 2.4 HU (water, cylinder /
# ACR insert), 0.7 HU noise, 1.8 HU uniformity, 0.04 mm ramps, 0.24 CNR, 0.24 % ghosting, 0.2 % PIU, 0.1 mm
# diameter, 3 % SNR (docs/phantom-qc.md).
RECOVERY = [
    ("ct_water", PhantomFaults(hu_offset=4.0), "water_hu", 4.0, 2.5),
    ("ct_water", PhantomFaults(noise=9.0), "noise_hu", 9.0, 0.15 * 9.0),
    ("ct_water", PhantomFaults(cupping_hu=-9.0), "uniformity_hu", -9.0 * (80 / 100) ** 2, 2.0),  # edge ROIs at r=80
    ("ct_acr", PhantomFaults(hu_offset=5.0), "water_hu", 5.0, 2.5),
    ("ct_acr", PhantomFaults(hu_offset=5.0), "insert_bone_hu", 915.0, 2.5),
    ("ct_acr", PhantomFaults(slice_thickness_mm=6.5), "slice_thickness_mm", 6.5, 0.15),
    ("ct_acr", PhantomFaults(noise=7.0), "low_contrast_cnr", 6.0 / 7.0, 0.25),
    ("ct_acr", PhantomFaults(noise=7.0), "noise_hu", 7.0, 0.15 * 7.0),
    ("mr_uniform", PhantomFaults(noise=25.0), "snr", 1000 / 25.0, 0.05 * 40),
    ("mr_uniform", PhantomFaults(nonuniformity_pct=14.0), "piu_pct", 86.0, 0.6),
    ("mr_uniform", PhantomFaults(ghosting_pct=3.5), "ghosting_pct", 3.5, 0.3),
    ("mr_uniform", PhantomFaults(distortion_mm=2.8), "diameter_error_mm", 2.8, 0.25),
    ("mr_acr", PhantomFaults(slice_thickness_mm=6.0), "slice_thickness_mm", 6.0, 0.15),
    ("mr_acr", PhantomFaults(distortion_mm=-2.4), "diameter_error_mm", -2.4, 0.25),
]


@pytest.mark.parametrize(("kind", "faults", "name", "truth", "tol"), RECOVERY,
                         ids=[f"{r[0]}-{r[2]}" for r in RECOVERY])
def test_measurement_recovers_injected_fault(tmp_path: Path, kind: str, faults: PhantomFaults, name: str,
                                             truth: float, tol: float) -> None:
    v = run(tmp_path, kind, faults)
    assert v.kind == "phantom" and set(v.checks) == {"integrity", "phantom"}
    got = values(v)[name]["value"]
    assert abs(got - truth) <= tol, f"{name}: measured {got}, injected {truth} +- {tol}"


# (kind, fault field, value inside tolerance, value outside, measurement that must flip)
FLIPS = [
    ("ct_water", "hu_offset", 3.0, 10.5, "water_hu"),  # +-7 HU
    ("ct_water", "noise", 8.0, 12.5, "noise_hu"),  # <= 10 HU
    ("ct_water", "cupping_hu", -4.0, -12.0, "uniformity_hu"),  # +-5 HU at the edge ROIs (x 0.64)
    ("ct_acr", "slice_thickness_mm", 6.35, 6.65, "slice_thickness_mm"),  # 5 +-1.5 mm
    ("ct_acr", "noise", 4.5, 8.0, "low_contrast_cnr"),  # CNR >= 1.0 (6 HU rod)
    ("ct_acr", "hu_offset", -3.0, -10.5, "water_hu"),  # +-7 HU on the water insert; the other inserts stay in range
    ("mr_uniform", "ghosting_pct", 1.8, 3.2, "ghosting_pct"),  # <= 2.5 %
    ("mr_uniform", "nonuniformity_pct", 10.0, 15.0, "piu_pct"),  # >= 87.5 % below 3 T
    ("mr_uniform", "distortion_mm", 1.5, 2.5, "diameter_error_mm"),  # +-2 mm
    ("mr_uniform", "noise", 15.0, 25.0, "snr"),  # >= 50
    ("mr_acr", "slice_thickness_mm", 5.5, 5.9, "slice_thickness_mm"),  # 5 +-0.7 mm
]


@pytest.mark.parametrize(("kind", "field", "ok", "bad", "name"), FLIPS, ids=[f"{f[0]}-{f[1]}" for f in FLIPS])
def test_verdict_flips_at_the_tolerance(tmp_path: Path, kind: str, field: str, ok: float, bad: float,
                                        name: str) -> None:
    good = run(tmp_path, kind, PhantomFaults(**{field: ok}))
    assert good.status == "pass", good.checks["phantom"].message
    assert values(good)[name]["status"] == "pass"
    failing = run(tmp_path, kind, PhantomFaults(**{field: bad}))
    assert failing.status == "fail"
    m = values(failing)[name]
    assert m["status"] == "fail" and [n for n, x in values(failing).items() if x["status"] == "fail"] == [name]
    action = failing.checks["phantom"].action
    assert action.startswith("Call service:") and m["label"] in action and m["tolerance_text"] in action


def test_piu_limit_depends_on_field_strength(tmp_path: Path) -> None:
    # ACR: PIU >= 87.5 % below 3 T, >= 82 % at 3 T; the same 85 % image fails at 1.5 T and passes at 3 T.
    faults = PhantomFaults(nonuniformity_pct=15.0)
    assert run(tmp_path, "mr_uniform", faults, field_strength_t=1.5).status == "fail"
    v3 = run(tmp_path, "mr_uniform", faults, field_strength_t=3.0)
    assert v3.status == "pass" and values(v3)["piu_pct"]["tolerance"] == [82.0, None]


def test_guideline_tolerance_overrides_default(tmp_path: Path) -> None:
    g = parse_guideline({"study": "QA", "phantom": {"tolerances": {"water_hu": [-3, 3]}}})
    v = run(tmp_path, "ct_water", PhantomFaults(hu_offset=5.0), guideline=g)  # within ACR +-7, outside the study's
    m = values(v)["water_hu"]
    assert v.status == "fail" and m["tolerance"] == [-3.0, 3.0] and m["source"] == "study guideline"
    assert values(run(tmp_path, "ct_water", PhantomFaults(hu_offset=5.0)))["water_hu"]["status"] == "pass"


def test_phantom_gets_no_patient_checks_and_patient_series_no_phantom_check(tmp_path: Path) -> None:
    g = load_guideline("abdomen_ct")
    v = run(tmp_path, "ct_acr", PhantomFaults(), guideline=g)
    assert v.kind == "phantom" and set(v.checks) == {"integrity", "phantom"}  # no protocol/contrast/coverage
    assert v.to_dict()["kind"] == "phantom" and Verdict.from_dict(v.to_dict()).kind == "phantom"
    # The same pixels without the phantom naming are a patient series: patient checks, no phantom check.
    folder = tmp_path / "patient"
    write_phantom("ct_water", folder, header={"SeriesDescription": "ABDOMEN PORTAL VENOUS", "ProtocolName": "ABDOMEN",
                                              "PatientName": "SUBJ-0001", "PatientID": "SUBJ-0001",
                                              "StudyDescription": "CT ABDOMEN", "BodyPartExamined": "ABDOMEN"})
    [p] = check_path(folder, g)
    assert p.kind == "patient" and "phantom" not in p.checks and "protocol" in p.checks
    assert "scanner_qualification" not in p.checks  # no registry offline


def test_routing_by_station_and_by_study(tmp_path: Path) -> None:
    plain = {"SeriesDescription": "AXIAL 5MM", "ProtocolName": "DAILY", "PatientName": "ANON", "PatientID": "X1",
             "StudyDescription": "DAILY"}
    folder = tmp_path / "plain"
    write_phantom("ct_water", folder, header=plain)
    [v] = check_path(folder)
    assert v.kind == "patient"
    by_station = parse_guideline({"study": "S", "phantom": {"stations": ["QA_VAN3"], "match": "(?!)"}})
    [v] = check_path(folder, by_station, station="QA_VAN3")
    assert v.kind == "phantom" and v.checks["phantom"].extra["phantom"]["recognised_by"] == "station QA_VAN3"
    [v] = check_path(folder, by_station, station="CT2")
    assert v.kind == "patient"
    [v] = check_path(folder, parse_guideline({"study": "Q", "phantom": {"all_series": True}}))
    assert v.kind == "phantom" and v.checks["phantom"].extra["phantom"]["recognised_by"] == "study"


def test_unanalysable_phantom_is_a_fail_with_an_action(tmp_path: Path) -> None:
    import numpy as np

    from scanqc.volume import Volume

    folder = tmp_path / "empty"
    write_dicom_series(Volume(np.full((4, 64, 64), -1000, np.float32), (5, 2, 2)), folder, "CT",
                       header={"SeriesDescription": "ACR CT PHANTOM"})
    [v] = check_path(folder)
    assert v.status == "fail" and "could not be analysed" in v.checks["phantom"].message
    assert v.checks["phantom"].action


@pytest.mark.parametrize(("section", "needle"), [
    ({"tolerance": {}}, "unknown field(s) ['tolerance']"),
    ({"tolerances": {"water_HU": [-1, 1]}}, "unknown measurement(s) ['water_HU']"),
    ({"tolerances": {"water_hu": [3, -3]}}, "expected [min, max]"),
    ({"tolerances": {"water_hu": [None, None]}}, "expected [min, max]"),
    ({"drift": {"trend": 5}}, "drift: fields are"),
    ({"drift": {"trend_points": 1}}, "trend_points"),
    ({"interval_days": 0}, "interval_days"),
    ({"match": "("}, "bad regex"),
    ({"stations": "CT1"}, "stations"),
])
def test_bad_phantom_section_is_a_coded_error(section: dict[str, Any], needle: str) -> None:
    with pytest.raises(ScanQCError) as exc:
        parse_guideline({"study": "S", "phantom": section})
    assert exc.value.code.value == "BAD_GUIDELINE" and needle in exc.value.message


def test_drift_rules() -> None:
    crit = default_criteria("ct_water")["water_hu"]  # +-7 HU; warning limit +-4.67
    rules = DriftRules()
    assert evaluate_drift([0.1, 0.0, 0.2, 0.1, 0.3, 0.2], crit, rules) == []
    rising = evaluate_drift([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], crit, rules)
    assert [f["rule"] for f in rising] == ["trend"] and rising[0]["direction"] == "rising"
    assert evaluate_drift([0.5, 1.0, 1.5, 2.0, 2.5], crit, rules) == []  # five points are not a trend of six
    near = evaluate_drift([0.0, 5.0, 4.8], crit, rules)
    assert [(f["rule"], f["side"]) for f in near] == [("warning_limit", "high")]
    assert evaluate_drift([0.0, -5.0, 3.0], crit, rules) == []
    # One-sided: SNR rising is no drift, falling towards its minimum is.
    snr = default_criteria("mr_uniform")["snr"]
    assert evaluate_drift([60, 70, 80, 90, 100, 110], snr, rules) == []
    assert evaluate_drift([110, 100, 90, 80, 70, 60], snr, rules)[0]["direction"] == "falling"


def test_documented_phantom_section_parses() -> None:
    import yaml

    text = (Path(__file__).parents[2] / "docs" / "guidelines.md").read_text().split("```yaml")[1].split("```")[0]
    g = parse_guideline(yaml.safe_load(text))
    assert g.phantom is not None and g.phantom.required and g.phantom.stations == ["QA_CT1"]
    assert g.phantom.tolerances["low_contrast_cnr"] == (1.0, None)


def test_phantom_is_not_a_visit_series(tmp_path: Path) -> None:
    from scanqc.pipeline import apply_required_series

    g = load_guideline("abdomen_ct")
    v = run(tmp_path, "ct_water", PhantomFaults(), guideline=g)
    apply_required_series([v], g, visit="screening")
    assert "required_series" not in v.checks and v.status == "pass"
