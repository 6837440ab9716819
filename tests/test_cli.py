"""`scanqc check`: the JSON Lines contract, input order, exit codes, the readable table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CONTRACT_KEYS = {"input", "series_uid", "modality", "status", "checks", "elapsed_ms"}
CHECK_KEYS = {"status", "score", "message", "action"}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanqc.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_json_lines_contract_and_input_order(write_series, tmp_path, pydicom_files):
    ct = write_series("ct", shape=(6, 32, 32), header={"SeriesDescription": "Abdomen PV"})
    mr = write_series("mr", "MR", shape=(5, 32, 32))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all" * 10)
    r = run_cli("check", str(mr), str(bad), str(ct), "--json")
    out = _lines(r.stdout)
    assert [o["input"] for o in out] == [str(mr), str(bad), str(ct)]
    for o in out:
        assert CONTRACT_KEYS <= set(o)
        assert o["status"] in ("pass", "warn", "fail", "error")
        assert isinstance(o["elapsed_ms"], float)
        for c in o["checks"].values():
            assert CHECK_KEYS <= set(c)
            assert c["status"] in ("pass", "warn", "fail", "skipped")
            assert c["score"] is None or 0 <= c["score"] <= 1
            if c["status"] in ("warn", "fail"):
                assert c["action"]
    assert out[1]["status"] == "error" and out[1]["error"]["code"] == "NOT_DICOM" and "error" not in out[0]
    assert out[0]["modality"] == "MR" and out[2]["modality"] == "CT"
    expected_checks = {"integrity", "protocol", "deidentification", "motion", "contrast_phase", "coverage"}
    assert expected_checks <= set(out[0]["checks"])
    assert r.returncode == 2  # any error -> 2


def test_skipped_checks_never_carry_a_score(write_series):
    r = run_cli("check", str(write_series("mr", "MR", shape=(5, 32, 32))), "--json")
    (o,) = _lines(r.stdout)
    for c in o["checks"].values():
        if c["status"] == "skipped":
            assert c["score"] is None and c["message"]


def test_exit_codes(write_series, tmp_path):
    clean = write_series("clean", shape=(6, 32, 32))
    r = run_cli("check", str(clean), "--json")
    statuses = {o["status"] for o in _lines(r.stdout)}
    assert r.returncode == (1 if "fail" in statuses else 0)
    gap = write_series("gap", shape=(10, 32, 32))
    for f in sorted(gap.iterdir())[3:5]:
        f.unlink()
    r = run_cli("check", str(gap), "--json")
    assert r.returncode == 1 and _lines(r.stdout)[0]["status"] == "fail"
    assert run_cli("check", "--no-such-flag").returncode == 2
    assert run_cli("check").returncode == 2
    r = run_cli("check", str(clean), "--protocol", str(tmp_path / "missing.yaml"), "--json")
    assert r.returncode == 2 and _lines(r.stdout)[0]["error"]["code"] == "BAD_GUIDELINE"


def test_multi_series_folder_gives_one_line_per_series(write_series):
    a = write_series("a", shape=(4, 16, 16), header={"SeriesNumber": 3})
    b = write_series("b", "MR", shape=(4, 16, 16), header={"SeriesNumber": 1})
    for f in b.iterdir():
        f.rename(a / ("b" + f.name))
    out = _lines(run_cli("check", str(a), "--json").stdout)
    assert [o["series_number"] for o in out] == [1, 3] and len({o["series_uid"] for o in out}) == 2


def test_readable_table(write_series):
    r = run_cli("check", str(write_series("ct", shape=(4, 16, 16))), env={"COLUMNS": "160"})
    assert "deidentification" in r.stdout and "integrity" in r.stdout
    assert not r.stdout.lstrip().startswith("{")


def test_sample_series_runs():
    r = run_cli("check", "--sample", "--json")
    (o, *_) = _lines(r.stdout)
    assert o["status"] in ("pass", "warn", "fail") and o["modality"] in ("MR", "CT")


def test_no_traceback_on_garbage(tmp_path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(b"\x1f\x8b" + os.urandom(100))
    r = run_cli("check", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr


# The torch-free check path is tested with the other dependency tiers in tests/test_import_tiers.py.


def test_corrupt_compressed_pixel_data_is_coded_without_decoder_tracebacks(tmp_path, pydicom_files):
    raw = bytearray((pydicom_files / "MR_small_RLE.dcm").read_bytes())
    item = raw.rindex(b"\xfe\xff\x00\xe0")  # the RLE fragment; corrupt its first segment offset
    raw[item + 12:item + 16] = (0xFFF0).to_bytes(4, "little")
    p = tmp_path / "bad_rle.dcm"
    p.write_bytes(bytes(raw))
    r = run_cli("check", str(p), "--json")
    assert r.returncode == 2 and _lines(r.stdout)[0]["error"]["code"] == "DECODE_FAILED"
    assert "Traceback" not in r.stderr
