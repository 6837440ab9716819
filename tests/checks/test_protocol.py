"""Protocol deviations from real DICOM headers against the shipped example guidelines."""

from __future__ import annotations

import datetime as dt

import pytest

from scanqc.errors import ScanQCError
from scanqc.guideline import load_guideline, parse_guideline
from scanqc.pipeline import apply_required_series, check_path

CT_OK = {"SeriesDescription": "Abdomen PV 3mm", "BodyPartExamined": "ABDOMEN", "KVP": 120,
         "ContrastBolusAgent": "Iohexol", "ContrastBolusStartTime": "101500", "AcquisitionTime": "101610"}
MR_OK = {"SeriesDescription": "T1 MPRAGE sag", "BodyPartExamined": "BRAIN", "RepetitionTime": 2300,
         "EchoTime": 2.9, "MagneticFieldStrength": 3}


def _protocol(folder, guideline="abdomen_ct", **kw):
    (v,) = check_path(folder, load_guideline(guideline), **kw)
    return v, v.checks["protocol"]


def test_compliant_ct_passes(write_series):
    folder = write_series("ct", shape=(10, 512, 512), spacing=(3.0, 0.78, 0.78), header=CT_OK)
    _, c = _protocol(folder)
    assert c.status == "pass", c.message
    assert c.extra["series_rule"] == "abdomen_pv" and c.extra["deviations"] == []


@pytest.mark.parametrize(("header", "spacing", "shape", "field", "action_words"), [
    ({"SliceThickness": 7.5}, (7.5, 0.78, 0.78), (6, 512, 512), "slice_thickness_mm", "slice thickness"),
    ({}, (3.0, 1.2, 1.2), (6, 512, 512), "pixel_spacing_mm", "pixel spacing"),
    ({}, (3.0, 0.5, 0.5), (6, 512, 512), "fov_mm", "field of view"),
    ({"KVP": 80}, (3.0, 0.78, 0.78), (6, 512, 512), "kvp", "100-140 kVp"),
    ({}, (3.0, 0.78, 0.78), (6, 256, 256), "matrix", "matrix"),
    ({"Modality": "MR"}, (3.0, 0.78, 0.78), (6, 512, 512), "modality", "CT series"),
    ({"ContrastBolusStartTime": "101500", "AcquisitionTime": "101535"}, (3.0, 0.78, 0.78), (6, 512, 512),
     "contrast_delay_s", "55-100 s"),
])
def test_each_ct_deviation_has_field_expected_actual_action(write_series, header, spacing, shape, field,
                                                            action_words):
    h = {**CT_OK, **header}
    folder = write_series("ct", shape=shape, spacing=spacing, header=h)
    v, c = _protocol(folder)
    devs = {d["field"]: d for d in c.extra["deviations"]}
    assert field in devs, c.extra["deviations"]
    d = devs[field]
    assert d["expected"] is not None and action_words in d["action"]
    assert c.status in ("fail", "warn") and c.action
    assert v.status in ("fail", "warn")


def test_slice_thickness_action_uses_guideline_override(write_series):
    folder = write_series("ct", shape=(6, 512, 512), spacing=(7.5, 0.78, 0.78), header={**CT_OK, "SliceThickness": 7.5})
    _, c = _protocol(folder)
    assert c.action == "Reconstruct at 1.0-5.0 mm slice thickness (RECIST needs <= 5 mm) and resend"


def test_mr_deviations_tr_te_field_strength(write_series):
    h = {**MR_OK, "RepetitionTime": 4000, "EchoTime": 12, "MagneticFieldStrength": 1.0}
    folder = write_series("mr", "MR", shape=(8, 256, 256), spacing=(1.0, 0.9, 0.9), header=h)
    _, c = _protocol(folder, "brain_mr")
    assert {d["field"] for d in c.extra["deviations"]} == {"tr_ms", "te_ms", "field_strength_t"}
    assert c.status == "fail"
    assert "TR" in next(d for d in c.extra["deviations"] if d["field"] == "tr_ms")["action"]


def test_missing_contrast_agent_warns_and_unexpected_contrast_fails(write_series):
    h = {k: v for k, v in CT_OK.items() if k not in ("ContrastBolusAgent", "ContrastBolusStartTime")}
    _, c = _protocol(write_series("a", shape=(6, 512, 512), spacing=(3, 0.78, 0.78), header=h))
    assert c.status == "warn" and c.extra["deviations"][0]["field"] == "contrast"
    h = {**MR_OK, "ContrastBolusAgent": "Gadobutrol"}
    _, c = _protocol(write_series("b", "MR", shape=(6, 256, 256), spacing=(1, 0.9, 0.9), header=h), "brain_mr")
    assert c.status == "fail" and c.extra["deviations"][0]["field"] == "contrast"


def test_unmatched_series_warns(write_series):
    folder = write_series("ct", shape=(4, 64, 64), header={"SeriesDescription": "Scout"})
    _, c = _protocol(folder)
    assert c.status == "warn" and "matches no series" in c.message


def test_without_guideline_protocol_is_skipped_but_reports_measurements(write_series):
    (v,) = check_path(write_series("ct", shape=(4, 64, 64)))
    c = v.checks["protocol"]
    assert c.status == "skipped" and c.extra["measured"]["slice_thickness_mm"] == pytest.approx(2.5)


def test_visit_window(write_series):
    g = load_guideline("abdomen_ct")
    acq = "20260310"
    folder = write_series("ct", shape=(4, 512, 512), spacing=(3, 0.78, 0.78),
                          header={**CT_OK, "AcquisitionDate": acq, "ClinicalTrialTimePointID": "cycle3"})
    base = dt.date(2026, 1, 27)  # cycle3 = day 42 after screening day -14 -> 56 days -> 2026-03-24 +/- 7
    (v,) = check_path(folder, g, baseline_date=base)
    c = v.checks["visit_window"]
    assert c.status == "fail" and c.extra["days_off"] == -14 and c.action
    (v,) = check_path(folder, g, baseline_date=dt.date(2026, 1, 13))
    assert v.checks["visit_window"].status == "pass"
    (v,) = check_path(folder, g)
    assert v.checks["visit_window"].status == "skipped"


def test_required_series_per_visit(write_series):
    g = load_guideline("abdomen_ct")
    h = {**CT_OK, "StudyInstanceUID": "1.2.3.4", "ClinicalTrialTimePointID": "screening"}
    folder = write_series("pv", shape=(4, 512, 512), spacing=(3, 0.78, 0.78), header=h)
    verdicts = check_path(folder, g)
    apply_required_series(verdicts, g, "screening")
    c = verdicts[0].checks["required_series"]
    assert c.status == "fail" and c.extra["missing_series"] == ["abdomen_nc"] and "non-contrast" in c.action
    assert verdicts[0].status == "fail"


@pytest.mark.parametrize(("doc", "words"), [
    ({}, "missing 'study'"),
    ({"study": "X", "series": [{"id": "a", "slice_thickness_mm": [5, 1]}]}, "[min, max]"),
    ({"study": "X", "series": [{"id": "a", "expected_phase": "venous"}]}, "'venous'"),
    ({"study": "X", "series": [{"id": "a", "sliceThickness": 1}]}, "sliceThickness"),
    ({"study": "X", "series": [{"id": "a"}], "visits": [{"name": "v", "day": 0, "required_series": ["b"]}]}, "['b']"),
])
def test_bad_guideline_quotes_the_bad_value(doc, words):
    with pytest.raises(ScanQCError) as e:
        parse_guideline(doc, "g.yaml")
    assert e.value.code.value == "BAD_GUIDELINE" and words in e.value.message
