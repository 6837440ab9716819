"""Issue 7.6: identifiable test data through HTTP and DICOM; the server log and the database bytes hold
none of it (hashed identifiers only)."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from .conftest import client, upload
from .helpers import SALT, ServerProc, ct_series, send_c_store, series_uid

pytestmark = pytest.mark.slow

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN12345", "PatientBirthDate": "19610417",
       "InstitutionName": "Springfield General Hospital", "ReferringPhysicianName": "House^Gregory",
       "AccessionNumber": "ACC55501", "PatientAddress": "12 Elm Street Springfield",
       "OtherPatientIDs": "SSN-078-05-1120", "InstitutionAddress": "1 Hospital Road"}
NEEDLES = [*PHI.values(), "Doe", "Jane", "MRN12345", "Gregory", "078-05-1120", "Elm Street"]


def test_no_phi_in_logs_or_database(secure_server: ServerProc, tmp_path: Path) -> None:
    # HTTP: identifiable headers, and a file name and a zip member name that carry the patient's name too.
    files = ct_series(tmp_path / "http", seed=41, header=PHI)
    named = [f.rename(f.with_name(f"Doe_Jane_MRN12345_{i}.dcm")) for i, f in enumerate(files)]
    r = upload(secure_server, "site01", named, station="PHI1")
    assert r.status_code == 200, r.text
    assert r.json()["verdicts"][0]["checks"]["deidentification"]["status"] == "fail"
    z = tmp_path / "Doe_Jane.zip"
    zfiles = ct_series(tmp_path / "zip", seed=42, header=PHI)
    with zipfile.ZipFile(z, "w") as zf:
        for i, f in enumerate(zfiles):
            zf.write(f, f"DOE_JANE_MRN12345/IMG{i}.dcm")
    assert upload(secure_server, "site01", [z], station="PHI1").status_code == 200
    # DICOM: the same identifiers over C-STORE.
    dfiles = ct_series(tmp_path / "dicom", seed=43, header=PHI)
    assert set(send_c_store(secure_server.dicom_port, dfiles, "CT_SITE01") or [1]) == {0}
    uid = series_uid(dfiles)
    with client(secure_server, "site01") as c:
        deadline = time.monotonic() + 30
        while c.get(f"/api/series/{uid}").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        rec = c.get(f"/api/series/{uid}").json()
        assert rec["verdict"]["checks"]["deidentification"]["status"] == "fail"
        # an unreadable upload whose error message would name the file
        bad = tmp_path / "Doe_Jane_MRN12345.dcm"
        bad.write_bytes(b"DICM" * 10)
        assert upload(secure_server, "site01", [bad]).status_code == 422
    time.sleep(1.0)  # let the log handlers flush
    log = secure_server.log.read_bytes()
    db = b"".join(p.read_bytes() for p in secure_server.data_dir.glob("scanqc.db*"))
    assert len(log) > 1000 and len(db) > 10_000
    for needle in NEEDLES:
        for name, blob in (("server log", log), ("database", db)):
            for form in {needle, needle.upper(), needle.lower()}:
                assert form.encode() not in blob, f"{form!r} found in the {name}"
    # hashed forms are there: the keyed hash links a patient's series within the deployment
    import hashlib
    import hmac

    h = hmac.new(SALT.encode(), b"MRN12345", hashlib.sha256).hexdigest()[:32]
    assert h.encode() in db
