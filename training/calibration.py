"""Calibration and decision thresholds, fitted on the validation split.

- Platt scaling (Platt 1999) for binary quantities: scikit-learn ``LogisticRegression`` on the raw
  logit; stored as ``{"a", "b"}`` and applied in numpy by :func:`scanqc.inference.platt`.
- Temperature scaling (Guo et al. 2017) for the multi-class heads: one scalar ``T`` minimising the
  validation negative log-likelihood.
- Thresholds: among cut-offs reaching the target specificity (default 95 % for ``fail``), the one with
  the highest Youden J, placed midway into the gap below it so it does not sit on a validation score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scanqc.models.evaluate import task_metrics
from scipy.optimize import minimize_scalar

from scanqc.inference import COVERAGE_ENDS, postprocess, raw_scores, softmax


def fit_platt(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return {"a": 1.0, "b": 0.0}
    lr = LogisticRegression(C=100.0, max_iter=1000)
    lr.fit(np.asarray(x, np.float64).reshape(-1, 1), y)
    return {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def choose_threshold(p: np.ndarray, y: np.ndarray, specificity: float) -> float:
    """Cut-off (flag when ``p >= t``) with specificity >= target and the best Youden J on (p, y)."""
    p, y = np.asarray(p, np.float64), np.asarray(y).astype(bool)
    if y.all() or (~y).all():
        return 0.5
    cands = np.unique(p)
    best_t, best_j = None, -np.inf
    for c in cands:
        flag = p >= c
        spec = float(np.mean(~flag[~y]))
        if spec < specificity:
            continue
        j = float(np.mean(flag[y])) + spec - 1.0
        if j > best_j + 1e-12:
            best_t, best_j = c, j
    if best_t is None:
        return float(min(1.0, cands[-1] + 1e-6))
    below = p[p < best_t]
    return float((best_t + below.max()) / 2.0) if below.size else float(best_t)


#: How the reported validation figure is made (metadata ``metrics.validation.estimate``).
CROSS_FIT = "2-fold cross-fit: calibration and thresholds fitted on one half of validation, measured on the other"


#: Metrics that depend on the fitted thresholds (the others depend on the scores' order or argmax only).
THRESHOLD_METRICS = {"motion": ("specificity_at_warn", "sensitivity_at_warn"), "contrast_phase": (),
                     "coverage": ("accuracy", "accuracy_full_vs_cut")}


def _folds(task: str, t: np.ndarray, k: int = 2, seed: int = 0) -> np.ndarray:
    """Fold index per case, stratified by the task's label (class, or coverage end pattern)."""
    key = t[:, 0].astype(int) if task != "coverage" else (t[:, 0] > 0.5).astype(int) * 2 + (t[:, 1] > 0.5)
    fold = np.zeros(len(t), int)
    rng = np.random.default_rng(seed)
    for v in np.unique(key):
        idx = rng.permutation(np.flatnonzero(key == v))
        fold[idx] = np.arange(len(idx)) % k
    return fold


def _combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold metrics -> one: counts summed, numbers averaged weighted by fold size (None ignored)."""
    n = [p.get("n", 0) for p in parts]
    out: dict[str, Any] = {}
    for key in parts[0]:
        vals = [p.get(key) for p in parts]
        if key == "n" or key == "confusion":
            out[key] = sum(vals) if key == "n" else {r: {c: sum(v[r][c] for v in vals) for c in vals[0][r]}
                                                     for r in vals[0]}
        elif isinstance(vals[0], dict):
            out[key] = _combine([{**v, "n": w} for v, w in zip(vals, n, strict=True)])
            out[key].pop("n", None)
        elif all(isinstance(v, (int, float)) or v is None for v in vals) and not isinstance(vals[0], bool):
            ok = [(float(v), w) for v, w in zip(vals, n, strict=True) if v is not None and w]
            out[key] = sum(v * w for v, w in ok) / sum(w for _, w in ok) if ok else None
        else:
            out[key] = vals[0]
    return out


def calibrate(task: str, logits: np.ndarray, targets: np.ndarray, fail_specificity: float = 0.95,
              warn_specificity: float = 0.90) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(calibration, thresholds, validation metrics) for one task from validation logits and targets.

    The calibration and thresholds returned (the ones a model ships with) are fitted on all validation
    cases. Measured on those same cases they would look better than they are (a coverage run read 1.000
    with its raw accuracy at 0.75), so the validation metrics are cross-fitted (:data:`CROSS_FIT`): each
    half is scored with calibration and thresholds fitted on the other half, and the two are combined.
    """
    logits = np.asarray(logits, np.float64)
    t = np.asarray(targets)
    cal, thr, in_sample = _fit(task, logits, t, fail_specificity, warn_specificity)
    fold = _folds(task, t)
    parts, oof = [], [None] * len(t)
    for k in (0, 1):
        fit, test = fold != k, fold == k
        if not fit.any() or not test.any():
            continue
        c, h, _ = _fit(task, logits[fit], t[fit], fail_specificity, warn_specificity)
        outs = postprocess(task, logits[test], c)
        for i, o in zip(np.flatnonzero(test), outs, strict=True):
            oof[i] = o
        parts.append(task_metrics(task, t[test], outs, h))
    if len(parts) == 2:
        # Ranking and argmax figures from the pooled out-of-fold outputs (every pair of cases counts, as in
        # cross-validated predictions); figures at a threshold from each half at its own thresholds, combined.
        metrics = task_metrics(task, t, oof, thr)
        combined = _combine(parts)
        for key in THRESHOLD_METRICS[task]:
            if key in combined:
                metrics[key] = combined[key]
    else:
        metrics = dict(in_sample)
    metrics["estimate"] = CROSS_FIT if len(parts) == 2 else "in-sample (too few validation cases to cross-fit)"
    primary = in_sample.get("primary")
    metrics["in_sample_" + str(primary)] = in_sample.get(primary)  # the optimistic figure, for comparison
    return cal, thr, metrics


def _fit(task: str, logits: np.ndarray, t: np.ndarray, fail_specificity: float,
         warn_specificity: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Calibration and thresholds fitted on (logits, t), and the metrics they give on those same cases."""
    raw = raw_scores(task, logits)
    cal: dict[str, Any] = {"method": "temperature+platt", "fitted_on": "validation", "n": len(t)}
    thr: dict[str, Any] = {"rule": f"fail at {fail_specificity:.0%} specificity on validation (max Youden J)"}
    if task == "motion":
        cls = t[:, 0].astype(int)
        cal["temperature"] = fit_temperature(logits, cls)
        cal["any"] = fit_platt(raw["any"], cls > 0)
        cal["severe"] = fit_platt(raw["severe"], cls == 2)
        out = postprocess(task, logits, cal)
        thr["motion_warn"] = choose_threshold(np.array([o["motion"] for o in out]), cls > 0, fail_specificity)
        thr["severe_fail"] = choose_threshold(np.array([o["severe"] for o in out]), cls == 2, fail_specificity)
    elif task == "contrast_phase":
        cls = t[:, 0].astype(int)
        cal["temperature"] = fit_temperature(logits[:, :4], cls)
        known = t[:, 2] > 0.5
        cal["suboptimal"] = fit_platt(raw["suboptimal"][known], t[known, 1] > 0.5)
        out = postprocess(task, logits, cal)
        sub = np.array([o["suboptimal"] for o in out])
        thr["suboptimal_warn"] = choose_threshold(sub[known], t[known, 1] > 0.5, fail_specificity)
        thr["mismatch_fail_confidence"] = 0.5  # below: a mismatch only warns (uncertain phase)
    else:
        for j, e in enumerate(COVERAGE_ENDS):
            cal[f"missing_{e}"] = fit_platt(raw[f"missing_{e}"], t[:, j] > 0.5)
        out = postprocess(task, logits, cal)
        for j, e in enumerate(COVERAGE_ENDS):
            p = np.array([o[f"missing_{e}"] for o in out])
            fail = choose_threshold(p, t[:, j] > 0.5, fail_specificity)
            warn = min(choose_threshold(p, t[:, j] > 0.5, warn_specificity), fail)
            thr[f"missing_{e}"] = {"warn": warn, "fail": fail}
    return cal, thr, task_metrics(task, t, out, thr)
