"""Promotion decides with a paired interval (issue 20 item 4); `models` CLI rough edges (items 3, 9)."""

from __future__ import annotations

import numpy as np
from scanqc.models.evaluate import paired_difference, promotion_decision
from typer.testing import CliRunner

from scanqc.cli import app


def _motion(n: int, signal: float, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    cls = np.arange(n) % 3
    p_any = 1 / (1 + np.exp(-(signal * (cls > 0) + rng.normal(0, 1, n))))
    outs = [{"motion": float(p), "severe": float(p) * (c == 2), "probabilities": {
        "none": 1 - float(p), "mild": float(p) / 2, "severe": float(p) / 2}} for p, c in zip(p_any, cls, strict=True)]
    return cls[:, None].astype(np.float32), outs


def test_tie_goes_in_worse_beyond_noise_is_refused_slightly_worse_goes_in():
    rng = np.random.default_rng(0)
    t, good = _motion(90, 3.0, rng)
    thr = {"motion_warn": 0.5}
    tie = paired_difference("motion", t, good, thr, good, thr, n_boot=300)
    assert tie["difference"] == 0.0 and tie["ci95"] == [0.0, 0.0]
    ok, why = promotion_decision(tie)
    assert ok and why.startswith("no worse within noise")

    _, useless = _motion(90, 0.0, np.random.default_rng(1))  # no signal: AUC ~0.5 vs ~0.95
    worse = paired_difference("motion", t, useless, thr, good, thr, n_boot=300)
    assert worse["ci95"][1] < 0
    ok, why = promotion_decision(worse)
    assert not ok and why.startswith("worse beyond noise: auc_any difference -")

    # the same scores with noise added: a difference within noise (the interval spans 0) goes in
    jitter = [{**o, "motion": float(np.clip(o["motion"] + e, 0, 1))} for o, e in
              zip(good, np.random.default_rng(2).normal(0, 0.1, 90), strict=True)]
    close = paired_difference("motion", t, jitter, thr, good, thr, n_boot=300)
    assert close["ci95"][0] < 0 < close["ci95"][1], close
    assert promotion_decision(close)[0]
    # ... unless the user asks for less tolerance than the noise allows: margin moves the bar, not the interval
    assert promotion_decision(worse, margin=1.0)[0]


def test_models_evaluate_unknown_task_is_usage(tmp_path):
    res = CliRunner().invoke(app, ["models", "evaluate", "covrage", "--manifest", str(tmp_path / "m.csv")])
    assert res.exit_code == 2 and res.output.startswith("USAGE: unknown task 'covrage'")
    assert "did you mean 'coverage'" in res.output


def test_models_list_fits_80_columns_and_says_where_figures_come_from():
    res = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["models", "list"])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if ln.startswith("│")]
    assert any("│ contrast_phase │" in ln for ln in rows) and not any("…" in ln for ln in rows), res.output
    text = " ".join(res.output.split())
    assert "motion 1.1.0 validation: training's validation split, n=192, in-sample" in text
    assert "motion 1.1.0 test: bundled synthetic held-out set: data/motion-test/manifest.csv [all], n=90" in text


def test_held_out_sources_say_whether_the_figure_is_independent_of_the_training_generator():
    import json

    from scanqc.models.evaluate import held_out_sources

    own = {"provenance": json.dumps({"generator": "scanqc.datasets.generate:motion:head"})}
    blind = {"provenance": json.dumps({"generator": "crosssim", "version": "1"})}
    real = {"provenance": "real"}
    assert held_out_sources([own, own]) == {"generators": {"scanqc.datasets.generate": 2}, "independent_rows": 0,
                                            "independent": False}
    mixed = held_out_sources([own, blind, real])
    assert mixed["independent_rows"] == 2 and not mixed["independent"]
    assert held_out_sources([blind, real])["independent"] is True
