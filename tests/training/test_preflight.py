"""Retraining rough edges (issue 20 items 1, 2, 8, 9): everything a user can get wrong is a coded error,
exit 2, before any case is read; the device recorded is the one used; torchrun takes `scanqc train`'s flags."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from scanqc.models.evaluate import check_cases
from scanqc.training.train import resolve_device
from typer.testing import CliRunner

from scanqc.cli import app
from scanqc.errors import ErrorCode, ScanQCError

sys.path.insert(0, str(Path(__file__).parent))
from tinydata import TINY_CONFIG, write_manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("tiny") / "motion", "motion", ["none", "mild", "severe"], 4, 0)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.json"
    p.write_text(json.dumps(TINY_CONFIG))
    return p


def _edit(manifest: Path, out: Path, change) -> Path:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    change(rows)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def _train(*args: str):
    return CliRunner().invoke(app, ["train", "--task", "motion", *args, "--no-progress"])


def test_missing_case_is_one_coded_line_and_no_run_folder(tiny, tmp_path):
    bad = _edit(tiny, tiny.parent / "typo.csv", lambda rows: rows[2].update(path="cases/mr03_typo"))
    out = tmp_path / "run"
    res = _train("--manifest", str(bad), "--out", str(out), "--device", "cpu")
    assert res.exit_code == 2, res.output
    assert res.output.startswith("NOT_FOUND: 1 of 12 motion case(s)")
    assert "mr03_typo: no such file or folder" in res.output
    assert "Traceback" not in res.output and not out.exists()  # failed before anything was made


def test_manifest_without_rows_for_the_task_names_the_file_not_a_list(tiny, tmp_path):
    res = CliRunner().invoke(app, ["train", "--task", "coverage", "--manifest", str(tiny), "--out",
                                   str(tmp_path / "r"), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith(f"USAGE: {tiny}: no rows for task 'coverage'"), res.output
    assert not (tmp_path / "r").exists()


def test_dicom_series_that_reads_as_another_modality_is_named(write_series):
    ct = write_series("ct_series", modality="CT", shape=(6, 16, 16))
    mr = write_series("mr_series", modality="MR", shape=(6, 16, 16))
    row = {"case_id": "site03-0012", "path": str(ct), "modality": "MR", "task": "motion", "label": "none"}
    with pytest.raises(ScanQCError) as e:
        check_cases([row, {**row, "case_id": "ok", "path": str(mr)}], "motion")
    assert e.value.code == ErrorCode.USAGE and e.value.message.startswith("1 of 2 motion case(s)")
    assert "case 'site03-0012'" in e.value.message
    assert "reads as CT (DICOM Modality), the manifest says MR" in e.value.message
    check_cases([{**row, "path": str(mr)}], "motion")  # a real MR series listed as MR passes
    with pytest.raises(ScanQCError, match="motion label 'moderate'"):
        check_cases([{**row, "path": str(mr), "label": "moderate"}], "motion")


@pytest.mark.parametrize("device, message", [
    ("gpu", "device 'gpu' is not one of auto, cpu, cuda, cuda:N (did you mean 'cuda'?)"),
    ("cuda", "--device cuda: this torch"),
    ("cuda:1", "--device cuda:1: this torch"),
])
def test_device_is_checked_before_data_loads(tiny, tmp_path, device, message):
    if torch.cuda.is_available() and device != "gpu":
        pytest.skip("this machine has CUDA")
    missing = tmp_path / "nowhere.csv"  # never read: the device is refused first
    res = _train("--manifest", str(missing if device == "gpu" else tiny), "--out", str(tmp_path / "r"),
                 "--device", device)
    assert res.exit_code == 2 and res.output.startswith("USAGE: ") and message in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_resolve_device_picks_and_checks_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto", world=2, local_rank=1) == torch.device("cuda:1")  # torchrun: one GPU each
    assert resolve_device("cpu", world=2, local_rank=1) == torch.device("cpu")
    for req, world, rank, msg in (("cuda:2", 1, 0, "cuda:2 does not exist (2 CUDA device(s)"),
                                  ("cuda:0", 2, 0, "under torchrun: each process uses cuda:LOCAL_RANK"),
                                  ("cuda", 3, 2, "start at most that many processes per node")):
        with pytest.raises(ScanQCError) as e:
            resolve_device(req, world, rank)
        assert e.value.code == ErrorCode.USAGE and msg in e.value.message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_gpu_options_on_cpu_are_recorded_as_not_used(tiny, tiny_config, tmp_path):
    out = tmp_path / "run"
    res = _train("--manifest", str(tiny), "--out", str(out), "--config", str(tiny_config), "--epochs", "1",
                 "--amp", "--compile", "--loader-workers", "1", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "amp and compile apply on CUDA only" in res.output
    s = json.loads((out / "train_summary.json").read_text())
    assert s["device"] == "cpu" and s["device_requested"] == "auto" and s["config"]["device"] == "auto"
    assert s["amp"] is None and s["compiled"] is False and s["loader_workers"] == 1


def test_torchrun_entry_point_takes_the_scanqc_train_options(tiny, tmp_path, capsys):
    from scanqc.training.train import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--threads", "--workers", "--max-minutes", "--batch-size", "--lr", "--device", "--amp", "--compile",
                 "--loader-workers", "--no-progress"):
        assert flag in text, flag
    with pytest.raises(SystemExit) as e:  # parsed (not "no such option"), then refused as a device error
        main(["--task", "motion", "--manifest", str(tiny), "--out", str(tmp_path / "r"), "--threads", "1",
              "--device", "gpu"])
    assert e.value.code == 2 and "USAGE: device 'gpu'" in capsys.readouterr().err
