"""End to end: C-STORE into a real `scanqc serve` (BentoML + receiver subprocess), verdict and SR over HTTP."""

from __future__ import annotations

import io
import time

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from scanqc.serving.sr import sr_summary

from tests.serving.conftest import Server
from tests.serving.test_receiver import make_series


def test_c_store_to_served_verdict_and_sr(qc_server: Server) -> None:
    dss = make_series(6)
    uid = str(dss[0].SeriesInstanceUID)
    ae = AE(ae_title="CT_SITE01")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", qc_server.dicom_port, ae_title="SCANQC")
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in dss] == [0] * 6
    finally:
        assoc.release()
    t_sent = time.monotonic()
    deadline = t_sent + 30
    while True:
        status, body = qc_server.get(f"/api/series/{uid}")
        # The first instance's header checks come first (completed_by "first_instance"); wait for the images'.
        if status == 200 and (body["verdict"].get("completion") or {}).get("completed_by") != "first_instance":
            break
        assert time.monotonic() < deadline, f"no verdict for {uid}: {status} {body}"
        time.sleep(0.1)
    latency = time.monotonic() - t_sent
    text = str(body)
    assert "site01" in text and "CT_SITE01" in text and "'n_instances': 6" in text
    assert latency < 15
    status, raw = qc_server.get(f"/api/series/{uid}/sr")
    assert status == 200
    sr = pydicom.dcmread(io.BytesIO(raw))
    assert sr.StudyInstanceUID == dss[0].StudyInstanceUID and sr_summary(sr)["series_uid"] == uid
    # An unknown calling AE is refused: the served config maps AEs to sites.
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assert stranger.associate("127.0.0.1", qc_server.dicom_port, ae_title="SCANQC").is_rejected
