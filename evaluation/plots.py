"""PNG figures for the quality report (matplotlib, Agg backend; imported only by ``scanqc evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scanqc.evaluation.metrics import CONFUSION_CLASSES, Quantity, reliability, roc_curve

COLOURS = {"CNN": "#1f5fa8", "baseline": "#d9822b"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 100})
    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


def roc_figure(task: str, curves: dict[str, list[Quantity]], path: Path, spec: float = 0.95) -> Path:
    """One panel per binary quantity; CNN and baseline curves, AUC in the legend."""
    from scanqc.evaluation.metrics import sensitivity_at_specificity
    from scanqc.models.evaluate import roc_auc

    plt = _plt()
    names = [q.name for q in next(iter(curves.values())) if q.roc]
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        for who, qs in curves.items():
            q = next((x for x in qs if x.name == name), None)
            if q is None or q.y.all() or (~q.y).all():
                continue
            fpr, tpr, _ = roc_curve(q.y, q.p)
            auc = roc_auc(q.y, q.p)
            ax.plot(fpr, tpr, color=COLOURS.get(who), lw=2, label=f"{who}  AUC {auc:.3f}")
            s = sensitivity_at_specificity(q.y, q.p, spec)
            if s["sensitivity"] is not None:
                ax.plot([1 - s["specificity"]], [s["sensitivity"]], "o", color=COLOURS.get(who), ms=6)
        ax.axvline(1 - spec, color="grey", ls=":", lw=1)
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=1, ls="--")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
               title=f"{name} (n={len(q.y) if q is not None else 0})")
        ax.legend(loc="lower right", fontsize=9)
        ax.grid(alpha=0.3)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{task}: ROC (dot = best sensitivity at {spec:.0%} specificity, dotted line)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def reliability_figure(task: str, curves: dict[str, list[Quantity]], path: Path, n_bins: int = 10) -> Path:
    """Reliability diagrams (observed frequency vs mean predicted probability per bin) + bin counts."""
    plt = _plt()
    names = [q.name for q in next(iter(curves.values())) if q.calibrated]
    cols = len(names)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 5.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    for k, name in enumerate(names):
        ax, axh = axes[0][k], axes[1][k]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect")
        offs = {"CNN": -width / 4, "baseline": width / 4}
        for who, qs in curves.items():
            q = next((x for x in qs if x.name == name), None)
            if q is None:
                continue
            r = reliability(q.y, q.p, n_bins)
            conf = [b["confidence"] for b in r["bins"] if b["n"]]
            freq = [b["frequency"] for b in r["bins"] if b["n"]]
            ax.plot(conf, freq, "o-", color=COLOURS.get(who), lw=2, ms=5, label=f"{who}  ECE {r['ece']:.3f}")
            centres = np.array([(b["lo"] + b["hi"]) / 2 for b in r["bins"]])
            axh.bar(centres + offs.get(who, 0), [b["n"] for b in r["bins"]], width=width / 2,
                    color=COLOURS.get(who), alpha=0.8, label=who)
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=name)
        ax.legend(loc="upper left", fontsize=9)
        ax.grid(alpha=0.3)
        axh.set(xlim=(0, 1), xlabel="predicted probability", ylabel="cases")
        axh.grid(alpha=0.3)
    fig.suptitle(f"{task}: reliability ({n_bins} equal-width bins)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_figure(task: str, matrices: dict[str, np.ndarray], path: Path) -> Path:
    """Confusion matrices (rows: truth, columns: prediction) with counts, side by side."""
    plt = _plt()
    classes = CONFUSION_CLASSES[task]
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.3), squeeze=False)
    for k, (who, m) in enumerate(matrices.items()):
        ax = axes[0][k]
        norm = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=11,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), [c.replace("_", "\n") for c in classes], fontsize=9)
        ax.set_yticks(range(len(classes)), [c.replace("_", "\n") for c in classes], fontsize=9)
        acc = np.trace(m) / max(m.sum(), 1)
        ax.set(xlabel="predicted", ylabel="true", title=f"{who}  (accuracy {acc:.3f}, n={m.sum()})")
    fig.suptitle(f"{task}: confusion matrix (colour = share of the true class)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def breakdown_figure(task: str, title: str, table: list[dict[str, Any]], path: Path) -> Path:
    """Bars: share correct per group, CNN vs baseline, with n under each group."""
    plt = _plt()
    groups = [r["group"] for r in table]
    who = [w for w in ("CNN", "baseline") if any(r.get(w) is not None for r in table)]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 3.8))
    w = 0.8 / max(len(who), 1)
    for i, name in enumerate(who):
        vals = [r.get(name) if r.get(name) is not None else np.nan for r in table]
        ax.bar(x + (i - (len(who) - 1) / 2) * w, vals, width=w, color=COLOURS[name], label=name)
    ax.set_xticks(x, [f"{g}\n(n={r['n']})" for g, r in zip(groups, table, strict=True)], fontsize=9)
    ax.set(ylim=(0, 1.05), ylabel="share correct", title=f"{task}: {title}")
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
