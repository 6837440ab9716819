"""Verdict -> DICOM Comprehensive SR (highdicom) round trip."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest

pytest.importorskip("highdicom")

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scanqc.serving.sr import SERIES_DESCRIPTION, parse_destination, sr_series_uid, sr_summary, verdict_to_sr

from scanqc.verdict import CheckResult, Verdict


def reference(**extra: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "SUBJ^0042"
    ds.PatientID = "TRIAL-0042"
    ds.PatientIdentityRemoved = "YES"
    ds.ClinicalTrialSubjectID = "0042"
    ds.ClinicalTrialTimePointID = "BASELINE"
    ds.StudyDate = "20240102"
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def warn_verdict(ref: Dataset) -> dict[str, Any]:
    v = Verdict(input="x", series_uid=str(ref.SeriesInstanceUID), modality="CT", status="fail",
                study_uid=str(ref.StudyInstanceUID), n_instances=120, checks={
                    "integrity": CheckResult("pass", "120 slice(s), regular geometry"),
                    "motion": CheckResult("fail", "motion artefacts likely", 0.91, "Repeat the acquisition"),
                    "contrast_phase": CheckResult("warn", "looks venous, protocol wants arterial", 0.62,
                                                  "Check the bolus timing", {"predicted": "venous"}),
                    "coverage": CheckResult.skipped("no model"),
                })
    return v.to_dict()


def test_sr_round_trips_with_every_check() -> None:
    ref = reference()
    verdict = warn_verdict(ref)
    back = roundtrip(verdict_to_sr(verdict, ref))
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
    assert back.Modality == "SR" and back.SeriesDescription == SERIES_DESCRIPTION
    assert back.CompletionFlag == "COMPLETE" and back.VerificationFlag == "UNVERIFIED"
    # Same patient/study; whatever the site sent (pseudonyms here) is what goes back.
    assert (back.PatientName, back.PatientID, back.StudyInstanceUID) == ("SUBJ^0042", "TRIAL-0042",
                                                                         ref.StudyInstanceUID)
    assert (back.ClinicalTrialSubjectID, back.ClinicalTrialTimePointID, back.PatientIdentityRemoved) == \
        ("0042", "BASELINE", "YES")
    assert back.SeriesInstanceUID != ref.SeriesInstanceUID
    ev = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == ref.StudyInstanceUID
    assert ev.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.SeriesInstanceUID
    assert ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID

    got = sr_summary(back)
    assert got["status"] == "fail" and got["series_uid"] == ref.SeriesInstanceUID
    assert got["actions"] == ["Repeat the acquisition", "Check the bolus timing"]
    assert set(got["checks"]) == set(verdict["checks"])
    for name, c in verdict["checks"].items():
        g = got["checks"][name]
        assert (g["status"], g["message"], g["action"]) == (c["status"], c["message"], c["action"])
        assert g["score"] == pytest.approx(c["score"]) if c["score"] is not None else g["score"] is None


def test_error_verdict_and_sparse_reference() -> None:
    ref = Dataset()  # no patient module at all: the SR must still be valid (type 2 left empty)
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ref.SOPInstanceUID, ref.StudyInstanceUID, ref.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    v = Verdict.from_error("folder", "undecodable", "pixel data could not be decoded", series_uid=None)
    back = roundtrip(verdict_to_sr(v.to_dict(), ref))
    got = sr_summary(back)
    assert got["status"] == "error" and got["error"] == "undecodable: pixel data could not be decoded"
    assert got["series_uid"] == ref.SeriesInstanceUID and got["checks"] == {}
    assert back.PatientID == ""


def test_sr_series_is_stable_per_checked_series() -> None:
    ref = reference()
    a = verdict_to_sr(warn_verdict(ref), ref)
    b = verdict_to_sr(warn_verdict(ref), ref)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == sr_series_uid(str(ref.SeriesInstanceUID))
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_parse_destination() -> None:
    assert parse_destination("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    with pytest.raises(ValueError):
        parse_destination("PACS:104")
