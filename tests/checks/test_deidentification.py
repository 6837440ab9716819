"""PHI left in headers is found and listed by tag, never by value."""

from __future__ import annotations

import json

from scanqc.guideline import load_guideline
from scanqc.pipeline import check_path

PHI = {"PatientName": "Doe^Jane", "PatientBirthDate": "19610412", "InstitutionName": "St Elsewhere Hospital",
       "OtherPatientIDs": "MRN-555-0199", "PatientAddress": "12 Main Street"}


def test_clean_pseudonymised_series_passes(write_series):
    (v,) = check_path(write_series("clean"))  # writer sets PatientIdentityRemoved=YES, pseudonym ID
    assert v.checks["deidentification"].status == "pass"


def test_identifying_attributes_fail_and_values_never_appear(write_series):
    folder = write_series("phi", header={**PHI, "PatientIdentityRemoved": "NO"})
    (v,) = check_path(folder)
    c = v.checks["deidentification"]
    assert c.status == "fail" and c.action
    keywords = {t["keyword"] for t in c.extra["tags"]}
    assert {"PatientName", "PatientBirthDate", "InstitutionName", "OtherPatientIDs", "PatientAddress"} <= keywords
    assert {"tag": "(0010,0030)", "keyword": "PatientBirthDate"} in c.extra["tags"]
    text = json.dumps(v.to_dict())
    for value in PHI.values():
        assert value not in text


def test_subject_pattern_allows_pseudonyms_and_flags_real_names(write_series):
    g = load_guideline("brain_mr")
    ok = write_series("ok", "MR", header={"PatientName": "SUBJ-0042", "PatientID": "SUBJ-0042"})
    (v,) = check_path(ok, g)
    assert v.checks["deidentification"].status == "pass"
    bad = write_series("bad", "MR", header={"PatientName": "Doe^John", "PatientID": "SUBJ-0042"})
    (v,) = check_path(bad, g)
    assert [t["keyword"] for t in v.checks["deidentification"].extra["tags"]] == ["PatientName"]


def test_burned_in_annotation_fails_and_private_tags_warn(write_series):
    (v,) = check_path(write_series("burn", header={"BurnedInAnnotation": "YES"}))
    assert v.checks["deidentification"].status == "fail"
    assert v.checks["deidentification"].extra["burned_in_annotation"] is True
    folder = write_series("priv")
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        block = ds.private_block(0x0029, "ACME 1.0", create=True)
        block.add_new(0x10, "LO", "site internal")
        ds.save_as(f)
    (v,) = check_path(folder)
    c = v.checks["deidentification"]
    assert c.status == "warn" and c.extra["private_groups"] == ["(0029,xxxx)"]


def test_phi_in_one_instance_only_is_found(write_series):
    import pydicom

    folder = write_series("one")
    f = sorted(folder.iterdir())[7]
    ds = pydicom.dcmread(f)
    ds.ReferringPhysicianName = "Smith^Alan"
    ds.save_as(f)
    (v,) = check_path(folder)
    assert [t["keyword"] for t in v.checks["deidentification"].extra["tags"]] == ["ReferringPhysicianName"]


def test_a_real_name_or_a_private_tag_in_one_of_many_identical_headers_is_found(write_series):
    # Identical headers are scanned once (by their undecoded bytes): one slice's own PatientName, and another's
    # private tag, must still count.
    import pydicom

    g = load_guideline("brain_mr")
    folder = write_series("mixed", "MR", header={"PatientName": "SUBJ-0042", "PatientID": "SUBJ-0042"})
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[3])
    ds.PatientName = "Doe^John"
    ds.save_as(files[3])
    (v,) = check_path(folder, g)
    assert [t["keyword"] for t in v.checks["deidentification"].extra["tags"]] == ["PatientName"]
    ds = pydicom.dcmread(files[3])
    ds.PatientName = "SUBJ-0042"
    ds.save_as(files[3])
    ds = pydicom.dcmread(files[5])
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "LO", "site internal")
    ds.save_as(files[5])
    (v,) = check_path(folder, g)
    c = v.checks["deidentification"]
    assert c.status == "warn" and c.extra["private_groups"] == ["(0029,xxxx)"] and not c.extra["tags"]
