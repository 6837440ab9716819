"""ROC, sensitivity at fixed specificity, ECE/reliability, confusion and per-case outcomes on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest
from scanqc.evaluation import metrics as M
from scanqc.models.evaluate import roc_auc


def test_roc_curve_matches_auc_and_ends_at_corners():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    fpr, tpr, _ = M.roc_curve(y, p)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, p), abs=1e-9)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3 == 0
        return y, y * 0.8 + rng.normal(0, 0.5, n)

    y, p = sample(90)
    ci = M.bootstrap_ci(roc_auc, y, p)
    assert ci is not None and ci[0] < roc_auc(y, p) < ci[1]
    assert M.bootstrap_ci(roc_auc, y, p) == ci  # seeded
    y2, p2 = sample(3000)
    ci2 = M.bootstrap_ci(roc_auc, y2, p2, n_boot=200)
    assert ci2 is not None and ci2[1] - ci2[0] < (ci[1] - ci[0]) / 3  # ~1/sqrt(n)
    assert M.bootstrap_ci(roc_auc, np.ones(5, bool), np.ones(5)) is None  # AUC undefined with one class
    perfect = M.bootstrap_ci(roc_auc, np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect == [1.0, 1.0]


def test_sensitivity_at_specificity_respects_the_specificity():
    y = np.array([0] * 20 + [1] * 10, bool)
    p = np.r_[np.linspace(0, 0.5, 20), np.linspace(0.45, 1.0, 10)]
    s = M.sensitivity_at_specificity(y, p, 0.95)
    assert s["specificity"] >= 0.95
    flagged = p >= s["threshold"]
    assert np.mean(flagged[y]) == pytest.approx(s["sensitivity"])
    assert M.sensitivity_at_specificity(np.ones(5, bool), np.ones(5))["sensitivity"] is None


def test_ece_zero_when_calibrated_and_large_when_overconfident():
    p = np.repeat(np.arange(10) / 10 + 0.05, 100)
    y = np.concatenate([np.arange(100) < 10 * b + 5 for b in range(10)])
    assert M.reliability(y, p)["ece"] == pytest.approx(0.0, abs=1e-9)
    bad = M.reliability(np.zeros(50, bool), np.full(50, 0.95))
    assert bad["ece"] == pytest.approx(0.95) and sum(b["n"] for b in bad["bins"]) == 50


def test_at_threshold_and_confusion():
    y = np.array([1, 1, 0, 0], bool)
    r = M.at_threshold(y, np.array([0.9, 0.2, 0.1, 0.7]), 0.5)
    assert (r["sensitivity"], r["specificity"], r["accuracy"]) == (0.5, 0.5, 0.5)
    assert M.confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist() == [[1, 0], [1, 1]]


def test_coverage_outcomes_use_fail_thresholds():
    targets = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    outs = [{"missing_superior": a, "missing_inferior": b} for a, b in [(0.1, 0.1), (0.9, 0.1), (0.1, 0.3), (0.9, 0.9)]]
    oc = M.case_outcomes("coverage", targets, outs, {"missing_inferior": {"fail": 0.25}})
    assert oc["true"].tolist() == [0, 1, 2, 3] and oc["pred"].tolist() == [0, 1, 2, 3]
    assert oc["correct"].all()
    names = [q.name for q in M.quantities("coverage", targets, outs)]
    assert names == ["missing superior end", "missing inferior end"]
