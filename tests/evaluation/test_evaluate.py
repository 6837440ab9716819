"""`scanqc evaluate` end to end on tiny manifests: stub ONNX models + the classical baseline, report with PNGs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scanqc.cli import app

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")


def test_evaluate_writes_report_with_plots_for_every_task(tiny_data, stub_models, tmp_path):
    out = tmp_path / "report"
    args = ["evaluate", "--models", str(stub_models), "--out", str(out), "--split", "all"]
    for m in tiny_data.values():
        args += ["--manifest", str(m), "--baseline-train", str(m)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert {s["task"] for s in summary["summary"]} == {"motion", "contrast_phase", "coverage"}
    report = json.loads((out / "report.json").read_text())
    for t in report["tasks"]:
        for who in ("CNN", "baseline"):
            block = t[who]
            assert 0.0 <= block["accuracy"] <= 1.0
            lo, hi = block["accuracy_ci95"]
            assert lo <= block["accuracy"] <= hi
            for q in block["quantities"].values():
                assert q["auc"] is None or 0.0 <= q["auc"] <= 1.0
                assert q["auc"] is None or q["auc_ci95"][0] <= q["auc"] <= q["auc_ci95"][1]
                assert q["ece"] is not None and len(q["reliability_bins"]) == 10
            assert sum(map(sum, block["confusion"]["matrix"])) == t["n"]
        assert t["breakdowns"], t["task"]
    md = (out / "report.md").read_text()
    for task in ("motion", "contrast_phase", "coverage"):
        for kind in ("roc", "reliability", "confusion"):
            png = out / f"{kind}_{task}.png"
            assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({png.name})" in md
    assert "<img" in (out / "report.html").read_text()


def test_evaluate_without_models_or_baseline_is_a_usage_error(tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--manifest", str(tiny_data["motion"]), "--models",
                                   str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--task", "coverage"])
    assert res.exit_code == 2 and "USAGE" in res.output


def test_baseline_uses_every_training_manifest_and_warns_when_constant(tiny_data, stub_models, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from tinydata import write_manifest

    more = write_manifest(tmp_path / "more", "motion", ["none", "mild", "severe"], 2, seed=5)
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["evaluate", "--manifest", str(tiny_data["motion"]), "--models", str(stub_models),
                                   "--out", str(out), "--split", "all", "--baseline-train", str(tiny_data["motion"]),
                                   "--baseline-train", str(more)])
    assert res.exit_code == 0, res.output
    (t,) = json.loads((out / "report.json").read_text())["tasks"]
    # both manifests (24 + 6 train+val rows), not just the first
    assert "30 cases" in t["baseline_source"] and str(more) in t["baseline_source"]
    assert t["model"]["source"] == "user"  # a folder given with --models is the user's
    # 30 cases are too few for the baseline's trees to split: it predicts one constant, and the report says so
    assert any(w.startswith("baseline gives the same output for all") for w in t["warnings"])
    assert "**warning**: baseline gives the same output" in (out / "report.md").read_text()


def test_evaluate_models_dir_of_the_bundled_models_says_bundled():
    from scanqc.evaluation.quality import resolve_model
    from scanqc.models.registry import BUNDLED_DIR

    assert resolve_model("motion", BUNDLED_DIR).source == "bundled"


def test_evaluate_default_split_is_test_like_models_evaluate(tiny_data, stub_models, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--manifest", str(tiny_data["motion"]), "--models", str(stub_models),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no rows of tasks" in res.output and "split 'test'" in res.output
    assert "--split all uses every row" in res.output and "PosixPath" not in res.output
