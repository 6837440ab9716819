"""Issue 7.3: acknowledged = on disk. kill -9 of the whole service mid-series, restart, every acknowledged
instance is still there, every complete series gets exactly one verdict, re-sent SOPInstanceUIDs are not
duplicated; HTTP uploads persisted before their check are checked after a restart."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from .helpers import ct_series, send_c_store, series_uid, server

pytestmark = pytest.mark.slow


def _wait(c: httpx.Client, path: str, ok, timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = c.get(path)
        if r.status_code == 200 and ok(last := r.json()):
            return last
        time.sleep(0.25)
    raise AssertionError(f"{path}: condition not met in {timeout} s (last: {last})")


def test_kill_9_mid_series_then_restart(tmp_path: Path) -> None:
    srv = server(tmp_path / "srv", quiet_s=3.0)
    srv.start()
    try:
        http_files = ct_series(tmp_path / "h", seed=1)
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            parts = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in http_files]
            r = c.post("/api/check", files=parts, data={"station": "HTTPX"})
            assert r.status_code == 200
            upload_id, http_uid = r.json()["upload_id"], r.json()["verdicts"][0]["series_uid"]
        a = ct_series(tmp_path / "a", seed=2)  # sent in full, killed before the quiet period ends
        b = ct_series(tmp_path / "b", seed=3)  # half sent before the kill, the rest after the restart
        assert send_c_store(srv.dicom_port, a, "CT_SITE01") == [0] * 12
        assert send_c_store(srv.dicom_port, b[:6], "CT_SITE01") == [0] * 6
        # kill -9 of `scanqc serve` only: its BentoML arbiter and workers must not outlive it (orphans would
        # hold the ports and the restart below could not bind).
        assert srv.kill_top() == []
    except BaseException:
        srv.kill()
        raise
    # Every acknowledged instance is on disk, complete and readable, under its SOPInstanceUID.
    for files in (a, b[:6]):
        folder = next(srv.data_dir.glob(f"incoming/site01/*/{series_uid(files)}"))
        for f in files:
            sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            stored = pydicom.dcmread(folder / f"{sop}.dcm")
            assert stored.pixel_array.shape == (32, 32)
    assert (srv.data_dir / "incoming" / "http" / upload_id / ".verdict").exists()
    # An upload persisted but never checked (the state a kill mid-check leaves behind).
    pending = srv.data_dir / "incoming" / "http" / "20990101T000000-pending0001"
    pending.mkdir(parents=True)
    p_files = ct_series(tmp_path / "p", seed=4)
    for i, f in enumerate(p_files):
        shutil.copy(f, pending / f"{i:05d}.dcm")
    (pending / ".upload.json").write_text(json.dumps({
        "site_id": "site02", "station": "HTTPY", "study_id": None, "visit": None, "modality_hint": None,
        "complete_study": False, "received_at": dt.datetime.now(dt.timezone.utc).isoformat()}))

    srv.start()
    try:
        resend = [*b[6:], b[0], b[1]]  # the rest of B, plus two instances it already has
        assert send_c_store(srv.dicom_port, resend, "CT_SITE01") == [0] * 8
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            for files in (a, b):
                rec = _wait(c, f"/api/series/{series_uid(files)}", lambda d: d["final"])
                # Exactly one live verdict: a provisional one shown before the kill is superseded by it.
                live = [h for h in rec["history"] if h["superseded_by"] is None]
                assert len(live) == 1 and live[0]["final"], rec["history"]
                assert all(h["final"] is False for h in rec["history"] if h["superseded_by"] is not None)
                assert rec["verdict"]["n_instances"] == 12 and rec["verdict"]["status"] == "pass"
                assert rec["site_id"] == "site01" and rec["source"] == "dicom"
            folder_b = next(srv.data_dir.glob(f"incoming/site01/*/{series_uid(b)}"))
            assert len(list(folder_b.glob("*.dcm"))) == 12  # the re-sent SOPs replaced, not added
            done = _wait(c, "/api/uploads/20990101T000000-pending0001", lambda d: d["state"] == "done")
            assert done["verdicts"][0]["series_uid"] == series_uid(p_files) and done["site_id"] == "site02"
            assert len(c.get(f"/api/series/{http_uid}").json()["history"]) == 1  # not re-checked
            # A check over its time limit (504 CHECK_TIMEOUT, the check stopped, its error verdict stored) and
            # the quarantine of uploads the service failed to check twice: tests/reliability/test_attack_server.py
        # Nothing was lost across the kill: the recovered DICOM series have their .verdict markers.
        time.sleep(0.5)
        for files in (a, b):
            assert next(srv.data_dir.glob(f"incoming/site01/*/{series_uid(files)}/.verdict")).exists()
    finally:
        srv.stop()
