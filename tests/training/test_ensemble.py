"""Ensembles (scanqc.training.ensemble): probability averaging, calibration on unseen cases, ONNX export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scanqc.training.config import TrainConfig
from scanqc.training.ensemble import ProbabilityEnsemble, build_ensemble, load_run_net
from scanqc.training.export import export_run
from scanqc.training.train import build_net, train

from scanqc.errors import ScanQCError
from scanqc.inference import OnnxModel

sys.path.insert(0, str(Path(__file__).parent))
from tinydata import LABELS, TINY_CONFIG, write_manifest


@pytest.mark.parametrize("task", ["motion", "contrast_phase", "coverage"])
def test_ensemble_averages_probabilities_in_member_layout(task):
    torch.manual_seed(0)
    cfg = TrainConfig(task=task, **TINY_CONFIG)
    a, b = build_net(cfg).eval(), build_net(cfg).eval()
    x = torch.randn(3, cfg.spec.in_channels, 16, 16, 16)
    with torch.no_grad():
        la, lb, le = a(x), b(x), ProbabilityEnsemble([a, b], task).eval()(x)
        self_ens = ProbabilityEnsemble([a, a], task).eval()(x)
    assert le.shape == la.shape
    if task == "motion":
        torch.testing.assert_close(torch.softmax(le, 1), (torch.softmax(la, 1) + torch.softmax(lb, 1)) / 2)
        torch.testing.assert_close(torch.softmax(self_ens, 1), torch.softmax(la, 1))  # one member's own answer
    else:
        k = 4 if task == "contrast_phase" else 0
        torch.testing.assert_close(torch.sigmoid(le[:, k:]), (torch.sigmoid(la[:, k:]) + torch.sigmoid(lb[:, k:])) / 2,
                                   atol=2e-6, rtol=1e-4)
        if k:
            torch.testing.assert_close(torch.softmax(le[:, :k], 1),
                                       (torch.softmax(la[:, :k], 1) + torch.softmax(lb[:, :k], 1)) / 2)


def test_ensemble_calibrates_on_unseen_cases_and_exports(tmp_path):
    # Two members trained on one manifest; the ensemble is calibrated on another one's validation rows.
    train_m = write_manifest(tmp_path / "a", "motion", LABELS["motion"], 8, seed=0)
    cal_m = write_manifest(tmp_path / "b", "motion", LABELS["motion"], 8, seed=5)
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(task="motion", epochs=2, seed=seed, **TINY_CONFIG)
        train(cfg, train_m, tmp_path / f"run{seed}", command=f"pytest seed {seed}", progress=False)
        runs.append(tmp_path / f"run{seed}")
    summary = build_ensemble(runs, cal_m, tmp_path / "ens", command="pytest ensemble")
    assert len(summary["ensemble"]) == 2 and summary["seed"] == [0, 1] and summary["n_val"] == 6
    assert summary["ensemble"][1]["command"] == "pytest seed 1"
    assert {"motion_warn", "severe_fail"} <= set(summary["thresholds"])
    net, cfg = load_run_net(tmp_path / "ens")
    assert isinstance(net, ProbabilityEnsemble) and len(net.members) == 2 and cfg.task == "motion"

    dest = export_run(tmp_path / "ens", "2.0.0", tmp_path / "models")
    meta = json.loads((dest / "metadata.json").read_text())
    assert meta["network"]["members"] == 2 and len(meta["training"]["ensemble"]) == 2
    assert meta["onnx"]["parity_max_abs_diff"] < 1e-4
    x = np.random.default_rng(0).normal(size=(2, cfg.spec.in_channels, 16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OnnxModel(dest / "model.onnx", (cfg.spec.in_channels, 16, 16, 16)).run(x), ref,
                               atol=1e-4)

    # Calibrating on cases a member trained on would flatter the ensemble: refused, naming the run.
    with pytest.raises(ScanQCError, match=r"run0 trained on \d+ of the"):
        import csv

        rows = list(csv.DictReader(train_m.open()))
        for r in rows:
            r["split"] = "val"
        leaked = tmp_path / "a" / "all_val.csv"
        with leaked.open("w", newline="") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        build_ensemble(runs, leaked, tmp_path / "ens2")
    with pytest.raises(ScanQCError, match="at least 2 runs"):
        build_ensemble(runs[:1], cal_m, tmp_path / "ens3")
    with pytest.raises(ScanQCError, match="itself an ensemble"):
        build_ensemble([runs[0], tmp_path / "ens"], cal_m, tmp_path / "ens4")


def test_ensemble_cli_reports_coded_errors(tmp_path):
    from typer.testing import CliRunner

    from scanqc.cli import app

    m = write_manifest(tmp_path / "a", "motion", LABELS["motion"], 4, seed=0)
    res = CliRunner().invoke(app, ["ensemble", "--run", str(tmp_path / "nope"), "--run", str(tmp_path / "nope2"),
                                   "--manifest", str(m), "--out", str(tmp_path / "ens")])
    assert res.exit_code == 2 and "nope: no train_summary.json" in res.output
    assert "Traceback" not in res.output
