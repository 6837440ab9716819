"""The whole model pipeline on a tiny configuration: train -> calibrate -> export (parity) -> registry ->
promote -> `scanqc check` with torch unimportable. Runs in well under a minute on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scanqc.models.registry import ModelRegistry
from scanqc.training.config import TrainConfig, load_config
from scanqc.training.export import PARITY_TOL, export_run, validate_metadata
from scanqc.training.train import train

from scanqc.errors import ErrorCode, ScanQCError

sys.path.insert(0, str(Path(__file__).parent))
from tinydata import TINY_CONFIG
from tinydata import tiny_manifests as make_tiny_manifests

TASKS = ("motion", "contrast_phase", "coverage")


@pytest.fixture(scope="module")
def tiny_manifests(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_manifests(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="module")
def exported(tiny_manifests, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    runs = tmp_path_factory.mktemp("runs")
    for task in TASKS:
        cfg = TrainConfig(task=task, epochs=3, **TINY_CONFIG)
        summary = train(cfg, tiny_manifests[task], runs / task, command=f"pytest tiny {task}", progress=False)
        assert summary["best_epoch"] >= 1 and (runs / task / "best.pt").is_file()
        export_run(runs / task, "0.1.0", root, changelog="tiny", test_manifest=tiny_manifests[task])
    return root


def test_run_folder_has_history_and_calibration(exported):
    run_root = next(Path(exported).parent.glob("runs*"))
    for task in TASKS:
        summary = json.loads((run_root / task / "train_summary.json").read_text())
        assert summary["seed"] == 0 and len(summary["manifest_sha256"]) == 64
        assert summary["history"][0]["epoch"] == 1 and "val_loss" in summary["history"][0]
        assert summary["thresholds"] and summary["calibration"]["fitted_on"] == "validation"
        # the reported figure is not measured with thresholds fitted on the same cases (issue 20 item 3)
        assert summary["validation_metrics"]["estimate"].startswith("2-fold cross-fit")


def test_export_metadata_parity_and_props(exported):
    import onnx

    for task in TASKS:
        d = exported / task / "0.1.0"
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["task"] == task and meta["version"] == "0.1.0"
        assert meta["onnx"]["parity_max_abs_diff"] < PARITY_TOL
        for key in ("labels", "preprocessing", "thresholds", "calibration", "training", "network_data_format",
                    "monai_version", "pytorch_version"):
            assert key in meta, key
        assert meta["training"]["command"] == f"pytest tiny {task}"
        assert "test" in meta["metrics"] and meta["metrics"]["test"]["n"] > 0
        assert not list(d.glob("*.data")) and meta["onnx"]["bytes"] < 2_000_000
        props = {p.key: p.value for p in onnx.load(str(d / "model.onnx")).metadata_props}
        assert json.loads(props["thresholds"]) == meta["thresholds"] and props["task"] == task
        validate_metadata(meta)  # MONAI bundle schema; channel_def names every input channel
        # Provenance that means something elsewhere: no absolute path, each manifest with its content hash.
        text = json.dumps(meta) + "".join(props.values())
        assert str(exported.parent) not in text and '"/' not in text, "absolute path in exported metadata"
        (rec,) = meta["training"]["manifests"]
        assert rec["path"].endswith("manifest.csv") and not rec["path"].startswith("/")
        assert rec["sha256"] == meta["training"]["manifest_sha256"] and len(rec["sha256"]) == 64
        assert not meta["metrics"]["test"]["manifest"].startswith("/")


def test_onnx_matches_torch_on_real_inputs(exported, tiny_manifests):
    import torch
    from scanqc.models.evaluate import read_manifest
    from scanqc.training.train import build_net, load_case

    reg = ModelRegistry(bundled_dir=exported, user_dir=exported / "none")
    for task in TASKS:
        model = reg.find(task, "0.1.0")
        cfg = TrainConfig(**model.metadata["training"]["config"])
        run = next(Path(exported).parent.glob("runs*")) / task
        net = build_net(cfg)
        net.load_state_dict(torch.load(run / "best.pt", weights_only=True)["state_dict"])
        net.eval()
        rows = read_manifest(tiny_manifests[task], task, "all")[:3]
        x = np.stack([load_case(r, model.spec) for r in rows])
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        assert np.max(np.abs(model.run(x) - ref)) < 1e-4


def test_promote_refuses_worse_and_forces(exported, tiny_manifests, tmp_path):
    from scanqc.models import registry as regmod
    from typer.testing import CliRunner

    from scanqc.cli import app

    user = tmp_path / "user"
    (user / "motion").mkdir(parents=True)
    import shutil

    shutil.copytree(exported / "motion" / "0.1.0", user / "motion" / "0.2.0")
    meta = json.loads((user / "motion" / "0.2.0" / "metadata.json").read_text())
    meta["version"] = "0.2.0"
    (user / "motion" / "0.2.0" / "metadata.json").write_text(json.dumps(meta))
    (user / "motion" / "promoted.json").write_text(json.dumps({"version": "0.2.0"}))
    shutil.copytree(exported / "motion" / "0.1.0", user / "motion" / "0.1.0")
    env = {"SCANQC_MODELS_DIR": str(user)}
    regmod.reset_default_registry()
    runner = CliRunner()
    try:
        os.environ.update(env)
        # A candidate that ranks every case backwards (Platt slope negated) is worse beyond noise: refused.
        bad = user / "motion" / "0.3.0"
        shutil.copytree(exported / "motion" / "0.1.0", bad)
        meta["version"] = "0.3.0"
        meta["calibration"]["any"] = {"a": -abs(meta["calibration"]["any"]["a"]) - 1.0, "b": 0.0}
        (bad / "metadata.json").write_text(json.dumps(meta))
        regmod.reset_default_registry()
        promote = ["models", "promote", "motion", "--manifest", str(tiny_manifests["motion"]), "--split", "all"]
        res = runner.invoke(app, [*promote[:3], "0.3.0", *promote[3:]])
        assert res.exit_code == 1 and "refused" in res.output and "worse beyond noise" in res.output, res.output
        # Identical weights: a tie is within noise, so it goes in without --force (it used to be refused).
        res = runner.invoke(app, [*promote[:3], "0.1.0", *promote[3:]])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout[res.stdout.index("{"):])
        assert out["reason"].startswith("no worse within noise: auc_any difference +0.0000, 95 % CI [+0.0000, +0.0000]")
        rec = json.loads((user / "motion" / "promoted.json").read_text())
        assert rec["version"] == "0.1.0" and not rec["forced"] and rec["comparison"]["difference"]["n"] == 24
        res = runner.invoke(app, ["models", "promote", "motion", "0.3.0", "--force"])
        assert res.exit_code == 0, res.output
        assert json.loads((user / "motion" / "promoted.json").read_text())["version"] == "0.3.0"
        res = runner.invoke(app, ["models", "list", "--json"])
        rows = json.loads(res.output)
        assert any(r["version"] == "0.3.0" and r["promoted"] for r in rows)
        mine = next(r for r in rows if r["version"] == "0.1.0")
        assert mine["figures"]["validation"].endswith("cross-fit: thresholds fitted on the other half")
        assert mine["figures"]["test"].startswith("your test set (synthetic)")
    finally:
        os.environ.pop("SCANQC_MODELS_DIR", None)
        regmod.reset_default_registry()


def test_check_runs_models_without_torch(exported, tiny_manifests, tmp_path):
    user = tmp_path / "models"
    import shutil

    shutil.copytree(exported, user)
    for task in TASKS:
        (user / task / "promoted.json").write_text(json.dumps({"version": "0.1.0"}))
    case = next((tiny_manifests["coverage"].parent / "cases").glob("coverage_superior_*.nii.gz"))
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'monai', 'torchio')];"
            "from scanqc.cli import main; sys.argv = ['scanqc', 'check', '--json', '--modality', 'MR', sys.argv[1]];"
            "main()")
    env = {**os.environ, "SCANQC_MODELS_DIR": str(user)}
    out = subprocess.run([sys.executable, "-c", code, str(case)], capture_output=True, text=True, env=env, timeout=120)
    verdict = json.loads(out.stdout.splitlines()[0])
    assert verdict["checks"]["motion"]["status"] != "skipped", verdict["checks"]["motion"]
    cov = verdict["checks"]["coverage"]
    assert cov["status"] in ("pass", "warn", "fail") and cov["model_version"] == "0.1.0"
    assert "missing" in cov and verdict["checks"]["contrast_phase"]["status"] == "skipped"


def test_check_models_flag_and_versions_in_the_table(exported, tiny_manifests, tmp_path):
    from typer.testing import CliRunner

    from scanqc.cli import app

    user = tmp_path / "models"
    shutil.copytree(exported, user)
    (user / "coverage" / "promoted.json").write_text(json.dumps({"version": "0.1.0"}))
    case = next((tiny_manifests["coverage"].parent / "cases").glob("coverage_superior_*.nii.gz"))
    args = ["check", "--modality", "MR", "--models", str(user), str(case)]
    res = CliRunner().invoke(app, ["check", "--json", *args[1:]])
    verdict = json.loads(res.stdout.splitlines()[0])
    assert verdict["checks"]["coverage"]["model_version"] == "0.1.0"  # from --models, not the bundled 1.x
    assert verdict["checks"]["motion"]["model_version"] != "0.1.0"  # no promoted.json there: bundled one
    res = CliRunner(env={"COLUMNS": "160"}).invoke(app, args)
    line = next(ln for ln in res.output.splitlines() if ln.strip("│ ").startswith("coverage"))
    assert "0.1.0" in line, res.output
    res = CliRunner().invoke(app, ["check", "--models", str(tmp_path / "nowhere"), str(case)])
    assert res.exit_code == 2 and "USAGE: --models" in res.output and "no such folder" in " ".join(res.output.split())


def test_config_file_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 2\nchannels: [4, 8]\nstrides: [2, 2]\n")
    cfg = load_config("coverage", p, seed=7)
    assert cfg.epochs == 2 and cfg.seed == 7 and cfg.channels == (4, 8)
    with pytest.raises(Exception, match="unknown"):
        p.write_text("epoch: 2\n")
        load_config("coverage", p)


def test_preprocessing_typo_in_a_training_config_is_a_usage_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preprocessing:\n  backgroud_channel: false\n")
    with pytest.raises(ScanQCError) as e:
        load_config("motion", p)
    assert e.value.code == ErrorCode.USAGE and "did you mean 'background_channel'" in e.value.message
    p.write_text("preprocessing:\n  background_channel: false\n")  # the intended setting takes effect
    spec = load_config("motion", p).spec
    assert not spec.background_channel and spec.in_channels == 1


def test_baseline_fits_and_reports_same_metrics(tiny_manifests, tmp_path):
    from scanqc.training.baseline import run_baseline

    for task in TASKS:
        res = run_baseline(task, tiny_manifests[task], tmp_path / task, test_manifest=tiny_manifests[task],
                           compare=None)
        assert res["baseline"]["primary"] and res["baseline"]["n"] > 0
        assert (tmp_path / task / "baseline.pkl").is_file()
        # 24-32 cases: too few for the trees (>= 20 per leaf) to split, and the result says so
        assert res["warnings"][0].startswith("baseline gives the same output for all"), res


def test_zero_air_augmentation_blanks_the_air_and_needs_the_background_channel(tiny_manifests):
    from scanqc.training.train import _datasets, read_rows, split_rows

    rows = read_rows(tiny_manifests["motion"], "motion")
    for prob, blank in ((1.0, True), (0.0, False)):
        cfg = TrainConfig(task="motion", zero_air_prob=prob, **TINY_CONFIG)
        train_rows, val_rows = split_rows(rows, cfg)
        train_ds, val_ds = _datasets(cfg, train_rows[:4], val_rows[:2], progress=False)
        imgs = [np.asarray(train_ds[i]["image"]) for i in range(len(train_ds))]
        assert all((not img[-1].any()) == blank for img in imgs)  # background channel all 0 only when blanked
        assert all(np.asarray(d["image"])[-1].any() for d in val_ds)  # validation is never augmented
    with pytest.raises(ScanQCError, match="background channel"):
        TrainConfig(task="coverage", zero_air_prob=0.2)
