"""The BentoML service over real HTTP: upload formats, coded errors, series/SR/queries API, probes, metrics."""

from __future__ import annotations

import concurrent.futures as cf
import io
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scanqc.io.nifti import write_nifti
from scanqc.volume import Volume

from .conftest import Server, ct_series, post_files

pytestmark = pytest.mark.slow


def test_probes_docs_and_startup(qc_server: Server) -> None:
    assert qc_server.get("/readyz")[0] == 200
    assert qc_server.get("/livez")[0] == 200
    status, spec = qc_server.get("/docs.json")
    assert status == 200 and "/api/check" in spec["paths"]
    status, st = qc_server.get("/api/status")
    assert st["receiver"]["running"] and st["receiver"]["error"] is None
    assert "salt" not in st["settings"]
    print(f"startup to ready: {qc_server.startup_s:.1f} s")


def test_upload_dicom_files_same_verdict_as_cli(qc_server: Server, tmp_path: Path) -> None:
    from scanqc.pipeline import check_path

    files = ct_series(tmp_path / "s", seed=1)
    status, body, secs = post_files(qc_server.base, files, station="HTTP1", site="site01")
    assert status == 200, body
    [v] = body["verdicts"]
    cli = check_path(tmp_path / "s")[0].to_dict()
    assert v["status"] == cli["status"] == "pass"
    assert {k: c["status"] for k, c in v["checks"].items()} == {k: c["status"] for k, c in cli["checks"].items()}
    assert v["series_uid"] == cli["series_uid"] and v["n_instances"] == 12
    assert body["site_id"] == "site01" and body["station"] == "HTTP1"
    # Stored before it was returned; the upload is on disk under data_dir.
    status, rec = qc_server.get(f"/api/series/{v['series_uid']}")
    assert status == 200 and rec["verdict"]["status"] == "pass" and rec["source"] == "http"
    assert rec["received_at"] and rec["verdict_at"]
    assert Path(v["input"]).is_relative_to(qc_server.data_dir)
    print(f"upload round trip (12 x 32x32 CT): {secs * 1000:.0f} ms")


def test_upload_zip_and_nifti(qc_server: Server, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "z", seed=2)
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in files:
            zf.write(f, f"DICOM/{f.name}")
    status, body, _ = post_files(qc_server.base, [zpath], station="HTTP1")
    assert status == 200 and body["verdicts"][0]["n_instances"] == 12
    nii = write_nifti(Volume(np.zeros((10, 16, 16), "float32"), (2.0, 1.0, 1.0)), tmp_path / "brain.nii.gz")
    status, body, _ = post_files(qc_server.base, [nii], station="HTTP1", modality="MR")
    assert status == 200, body
    assert body["verdicts"][0]["modality"] == "MR" and body["verdicts"][0]["status"] != "error"


def test_bad_uploads_are_coded_4xx(qc_server: Server, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    status, body, _ = post_files(qc_server.base, [junk], station="HTTP1")
    assert status == 422 and body["error"]["code"] == "NOT_DICOM"
    assert body["verdicts"][0]["status"] == "error"
    status, body, _ = post_files(qc_server.base, [], station="HTTP1")
    assert status == 400 and body["error"]["code"] == "EMPTY_INPUT"
    status, body, _ = post_files(qc_server.base, ct_series(tmp_path / "b"), study="NO-SUCH-STUDY")
    assert status == 400 and body["error"]["code"] == "BAD_GUIDELINE"
    bomb = tmp_path / "evil.zip"
    with zipfile.ZipFile(bomb, "w") as zf:
        zf.writestr("../../escape.dcm", b"x" * 100)
    status, body, _ = post_files(qc_server.base, [bomb])
    assert status == 422 and body["error"]["code"] == "ARCHIVE_UNSAFE"
    assert qc_server.get("/api/series/1.2.3.4.5")[1]["error"]["code"] == "NOT_FOUND"
    assert qc_server.get("/api/verdicts?limit=abc")[0] == 400
    assert qc_server.post_json("/api/queries/999999/answer", {"answer": "x"})[0] == 404


def test_failed_check_opens_query_answer_close(qc_server: Server, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "thick", thickness=8.0, seed=3)
    status, body, _ = post_files(qc_server.base, files, station="HTTP3", site="site03")  # site03 -> TEST-ST
    assert status == 200 and body["study_id"] == "TEST-ST"
    v = body["verdicts"][0]
    assert v["status"] == "fail" and v["checks"]["protocol"]["status"] == "fail"
    _, qs = qc_server.get(f"/api/queries?series_uid={v['series_uid']}")
    [q] = qs["queries"]
    assert q["state"] == "open" and q["check"] == "protocol" and "slice" in q["action"].lower()
    assert qc_server.post_json(f"/api/queries/{q['id']}/close", {})[0] == 200  # open -> closed is allowed
    # a fresh one for the full cycle
    status, body, _ = post_files(qc_server.base, ct_series(tmp_path / "thick2", thickness=8.0, seed=4),
                                 station="HTTP3", site="site03")
    _, qs = qc_server.get(f"/api/queries?series_uid={body['verdicts'][0]['series_uid']}&state=open")
    qid = qs["queries"][0]["id"]
    status, q = qc_server.post_json(f"/api/queries/{qid}/answer", {"answer": "re-reconstructed at 3 mm", "by": "tech"})
    assert status == 200 and q["state"] == "answered" and q["answered_at"]
    assert qc_server.post_json(f"/api/queries/{qid}/answer", {"answer": "again"})[1]["error"]["code"] == "INVALID_STATE"
    status, q = qc_server.post_json(f"/api/queries/{qid}/close", {"resolution": "accepted", "by": "central"})
    assert status == 200 and q["state"] == "closed"
    assert qc_server.post_json(f"/api/queries/{qid}/close", {})[0] == 409
    assert qc_server.post_json(f"/api/queries/{qid}/answer", {})[0] in (400, 409)


def test_sr_over_http(qc_server: Server, tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    import pydicom

    files = ct_series(tmp_path / "sr", seed=5)
    _, body, _ = post_files(qc_server.base, files, station="HTTP1")
    uid = body["verdicts"][0]["series_uid"]
    status, data = qc_server.get(f"/api/series/{uid}/sr")
    assert status == 200, data
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.Modality == "SR"


def test_concurrent_uploads_each_get_their_verdict(qc_server: Server, tmp_path: Path) -> None:
    n = 6
    series = [ct_series(tmp_path / f"c{i}", seed=100 + i, thickness=3.0 if i % 2 else 8.0) for i in range(n)]
    t0 = __import__("time").perf_counter()
    with cf.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(lambda i: post_files(qc_server.base, series[i], station=f"CONC{i}", site="site03"),
                              range(n)))
    wall = __import__("time").perf_counter() - t0
    import pydicom

    for i, (status, body, _) in enumerate(results):
        assert status == 200
        [v] = body["verdicts"]
        assert v["series_uid"] == str(pydicom.dcmread(series[i][0]).SeriesInstanceUID)
        assert v["status"] == ("pass" if i % 2 else "fail"), v
        assert body["station"] == f"CONC{i}"
    print(f"{n} concurrent uploads: {wall:.2f} s wall, {n / wall:.1f} series/s")


def test_metrics_and_privacy(qc_server: Server, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "p", seed=6, header={"PatientID": "ALICE-123", "PatientName": "Smith^Alice",
                                                      "AccessionNumber": "ACC998877"})
    status, body, _ = post_files(qc_server.base, files, station="HTTP1")
    assert status == 200
    assert body["verdicts"][0]["checks"]["deidentification"]["status"] == "fail"
    status, text = qc_server.get("/metrics")
    assert status == 200
    text = text.decode()
    assert 'scanqc_verdicts_total{source="http",status="pass"}' in text
    assert 'scanqc_checks_total{check="protocol"' in text
    assert "scanqc_verdict_seconds_bucket" in text and "scanqc_turnaround_seconds_count" in text
    assert "scanqc_queue_depth" in text
    db = qc_server.data_dir / "scanqc.db"
    con = sqlite3.connect(db)
    rows = con.execute("select patient_hash, accession_hash from verdicts where series_uid = ?",
                       (body["verdicts"][0]["series_uid"],)).fetchall()
    con.close()
    assert rows and all(len(r[0]) == 32 and r[1] for r in rows)
    raw = b"".join(p.read_bytes() for p in qc_server.data_dir.glob("scanqc.db*"))
    for secret in (b"ALICE-123", b"Smith^Alice", b"ACC998877"):
        assert secret not in raw


def test_model_checks_run_through_the_batching_inference_service(qc_server: Server, tmp_path: Path) -> None:
    """The bundled ONNX models answer in the service exactly as in the CLI (same path, batched inference)."""
    from scanqc.datasets.samples import write_sample
    from scanqc.models import default_registry

    from scanqc.pipeline import check_path

    registry = default_registry()
    if registry.get("contrast_phase") is None:
        pytest.skip("no contrast_phase model installed")
    folder = write_sample("abdomen_ct", tmp_path / "ct", seed=3, matrix=192, pixel_mm=2.0, slice_mm=5.0)
    with cf.ThreadPoolExecutor(3) as ex:  # concurrent series share the adaptive batcher
        results = list(ex.map(lambda i: post_files(qc_server.base, sorted(folder.iterdir()), station=f"ML{i}"),
                              range(3)))
    cli = check_path(folder)[0].to_dict()["checks"]
    for status, body, _ in results:
        assert status == 200, body
        checks = body["verdicts"][0]["checks"]
        for task in ("contrast_phase", "coverage"):
            if registry.get(task) is None:
                continue
            assert checks[task]["status"] != "skipped", checks[task]
            assert checks[task]["status"] == cli[task]["status"]
            assert checks[task]["score"] == pytest.approx(cli[task]["score"], abs=1e-3)
        assert checks["contrast_phase"]["predicted"] == cli["contrast_phase"]["predicted"]
    _, text = qc_server.get("/metrics")
    assert 'scanqc_inference_batch_size_count{task="contrast_phase"}' in text.decode()
