"""Metrics the task-level ones (:func:`scanqc.models.evaluate.task_metrics`) do not cover: ROC curves,
sensitivity at a fixed specificity, calibration (ECE, reliability bins), confusion matrices and
per-case outcomes for breakdowns. numpy only.

Every model output goes through one of a few *binary quantities* per task (``any motion``, ``missing
superior end``, ``portal venous vs rest``...): a label vector ``y`` and a probability ``p`` for the
same cases, so ROC, sensitivity at specificity and calibration are computed the same way for the CNN
and the classical baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scanqc.models.evaluate import roc_auc

from scanqc.inference import COVERAGE_ENDS, MOTION_LABELS, PHASES

#: Class names of the confusion matrix per task (coverage: which ends are cut, from the fail thresholds).
CONFUSION_CLASSES = {"motion": list(MOTION_LABELS), "contrast_phase": list(PHASES),
                     "coverage": ["full", "superior", "inferior", "both"]}


@dataclass
class Quantity:
    """One binary question a model answers, with labels and probabilities for the same cases."""

    name: str
    y: np.ndarray  # bool [n]
    p: np.ndarray  # float [n]
    calibrated: bool = True  # include in the calibration plots (a probability the verdict reports)
    roc: bool = True  # include in the ROC table and plots (a detection question)


def bootstrap_ci(stat: Any, y: np.ndarray, *arrays: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of ``stat(y, *arrays)`` over cases (Efron & Tibshirani 1993, ch. 13).

    Resampling is stratified by ``y`` (positives and negatives, or classes, drawn separately), so every
    replicate keeps the test set's class mix and an AUC is always defined. On the 90-100-case held-out
    sets an AUC of 0.95 has an interval ~0.05 wide: read model comparisons with it. None when ``stat`` is
    undefined on the data.
    """
    y = np.asarray(y)
    if stat(y, *arrays) is None:
        return None
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == v) for v in np.unique(y)]
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        v = stat(y[idx], *(a[idx] for a in arrays))
        if v is not None:
            vals.append(v)
    lo, hi = np.percentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with one point per distinct score, from (0, 0) to (1, 1); flagged = p >= t."""
    y = np.asarray(y, bool)
    p = np.asarray(p, np.float64)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]
    tps = np.cumsum(ys)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thr = np.r_[np.inf, ps[distinct]]
    return fpr, tpr, thr


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float = 0.95) -> dict[str, Any]:
    """Best sensitivity among thresholds whose specificity on these cases is >= ``specificity``.

    This is the threshold chosen *on the test set itself* (an optimistic, threshold-free summary like the
    AUC); the sensitivity at the model's shipped threshold is reported separately.
    """
    y = np.asarray(y, bool)
    if y.all() or (~y).all():
        return {"specificity_target": specificity, "sensitivity": None, "threshold": None, "specificity": None}
    fpr, tpr, thr = roc_curve(y, p)
    ok = (1.0 - fpr) >= specificity - 1e-12
    i = int(np.nonzero(ok)[0][np.argmax(tpr[ok])])
    return {"specificity_target": specificity, "sensitivity": float(tpr[i]),
            "threshold": None if not np.isfinite(thr[i]) else float(thr[i]), "specificity": float(1 - fpr[i])}


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity and accuracy when flagging p >= threshold."""
    y = np.asarray(y, bool)
    f = np.asarray(p) >= threshold
    return {"threshold": float(threshold),
            "sensitivity": float(np.mean(f[y])) if y.any() else None,
            "specificity": float(np.mean(~f[~y])) if (~y).any() else None,
            "accuracy": float(np.mean(f == y))}


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error (equal-width bins on [0, 1], weighted by count; Guo et al. 2017) and bins."""
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        k = idx == b
        n = int(k.sum())
        conf = float(p[k].mean()) if n else None
        freq = float(y[k].mean()) if n else None
        if n:
            ece += n / len(p) * abs(conf - freq)
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": n, "confidence": conf, "frequency": freq})
    return {"ece": float(ece) if len(p) else None, "bins": bins, "n_bins": n_bins,
            "brier": float(np.mean((p - y) ** 2)) if len(p) else None}


def confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), int)
    for t, q in zip(np.asarray(true, int), np.asarray(pred, int), strict=True):
        m[t, q] += 1
    return m


def _coverage_class(sup: np.ndarray, inf: np.ndarray) -> np.ndarray:
    return np.where(sup & inf, 3, np.where(sup, 1, np.where(inf, 2, 0)))


def coverage_fail_thresholds(thresholds: dict[str, Any]) -> dict[str, float]:
    return {e: float((thresholds.get(f"missing_{e}") or {}).get("fail", 0.5)) for e in COVERAGE_ENDS}


def case_outcomes(task: str, targets: np.ndarray, outputs: list[dict[str, Any]],
                  thresholds: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-case ``true`` / ``pred`` class (confusion-matrix indices), ``correct`` and ``score``."""
    t = np.asarray(targets)
    if task == "motion":
        true = t[:, 0].astype(int)
        pred = np.array([int(np.argmax([o["probabilities"][k] for k in MOTION_LABELS])) for o in outputs], int)
        score = np.array([o["motion"] for o in outputs])
        flagged = score >= float(thresholds.get("motion_warn", 0.5))
        return {"true": true, "pred": pred, "correct": pred == true, "score": score,
                "flag_correct": flagged == (true > 0)}
    if task == "contrast_phase":
        true = t[:, 0].astype(int)
        pred = np.array([PHASES.index(o["predicted"]) for o in outputs], int)
        score = np.array([o["probabilities"][o["predicted"]] for o in outputs])
        return {"true": true, "pred": pred, "correct": pred == true, "score": score, "flag_correct": pred == true}
    thr = coverage_fail_thresholds(thresholds)
    y = t > 0.5
    f_sup = np.array([o["missing_superior"] for o in outputs]) >= thr["superior"]
    f_inf = np.array([o["missing_inferior"] for o in outputs]) >= thr["inferior"]
    true, pred = _coverage_class(y[:, 0], y[:, 1]), _coverage_class(f_sup, f_inf)
    score = np.array([max(o["missing_superior"], o["missing_inferior"]) for o in outputs])
    return {"true": true, "pred": pred, "correct": pred == true, "score": score,
            "flag_correct": (pred > 0) == (true > 0)}


def quantities(task: str, targets: np.ndarray, outputs: list[dict[str, Any]]) -> list[Quantity]:
    """The binary quantities of a task, for ROC / sensitivity at specificity / calibration."""
    t = np.asarray(targets)
    out: list[Quantity] = []
    if task == "motion":
        cls = t[:, 0].astype(int)
        out.append(Quantity("any motion", cls > 0, np.array([o["motion"] for o in outputs])))
        out.append(Quantity("severe motion", cls == 2, np.array([o["severe"] for o in outputs])))
    elif task == "contrast_phase":
        cls = t[:, 0].astype(int)
        probs = np.array([[o["probabilities"][k] for k in PHASES] for o in outputs])
        pred = probs.argmax(1)
        # Top-label calibration: is the reported phase right as often as its probability says?
        out.append(Quantity("predicted phase correct", pred == cls, probs.max(1), roc=False))
        for i, ph in enumerate(PHASES):
            out.append(Quantity(f"{ph} vs rest", cls == i, probs[:, i], calibrated=False))
        known = t[:, 2] > 0.5
        if known.any():
            out.append(Quantity("suboptimal enhancement", t[known, 1] > 0.5,
                                np.array([o["suboptimal"] for o in outputs])[known]))
    elif task == "coverage":
        for j, e in enumerate(COVERAGE_ENDS):
            out.append(Quantity(f"missing {e} end", t[:, j] > 0.5, np.array([o[f"missing_{e}"] for o in outputs])))
    return out


def quantity_metrics(q: Quantity, specificities: tuple[float, ...] = (0.95, 0.90), n_bins: int = 10,
                     threshold: float | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"n": len(q.y), "n_positive": int(q.y.sum()), "auc": roc_auc(q.y, q.p),
                           "auc_ci95": bootstrap_ci(roc_auc, q.y, q.p)}
    for s in specificities:
        res[f"sens_at_spec{round(s * 100)}"] = sensitivity_at_specificity(q.y, q.p, s)
    if threshold is not None:
        res["at_shipped_threshold"] = at_threshold(q.y, q.p, threshold)
    cal = reliability(q.y, q.p, n_bins)
    res.update(ece=cal["ece"], brier=cal["brier"], reliability_bins=cal["bins"])
    return res


def shipped_threshold(task: str, name: str, thresholds: dict[str, Any]) -> float | None:
    """The decision threshold a verdict uses for a quantity (fail for coverage, warn for motion)."""
    if name == "any motion":
        return float(thresholds.get("motion_warn", 0.5))
    if name == "severe motion":
        return float(thresholds.get("severe_fail", 0.5))
    if name == "suboptimal enhancement":
        return float(thresholds.get("suboptimal_warn", 0.5))
    if name.startswith("missing "):
        return coverage_fail_thresholds(thresholds)[name.split()[1]]
    return None
