"""Classical baseline: hand-crafted image-quality features + a scikit-learn classifier, on the same data.

So the CNN is always compared with something simpler (``scanqc baseline``):

- MR (motion, brain coverage): MRIQC-style IQMs (Esteban et al. 2017, PLOS ONE 12:e0184661) computed
  on an Otsu head mask: SNR, CNR, CJV (Ganzetti et al. 2016), EFC (Atkinson et al. 1997), FBER, a QI1-like
  share of bright background voxels (Mortamet et al. 2009, artefacts in air), gradient sharpness.
- CT (contrast phase): HU statistics in the body (HU > -300) per superior/middle/inferior third:
  percentiles and the share of voxels in enhancement bands (150-250, 250-400, > 400 HU).
- Coverage: foreground share of the first/last slices along the superior-inferior axis relative to
  the maximum (anatomy touching the ends), for MR and CT.

Classifier: ``HistGradientBoostingClassifier`` (one per quantity). Metrics: the same
:func:`scanqc.models.evaluate.task_metrics` as the CNN.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from scanqc.models.evaluate import encode_row, read_manifest, task_metrics

from scanqc.inference import COVERAGE_ENDS, MOTION_LABELS, PHASES
from scanqc.preprocessing import canonicalize, resample_fit


def otsu(x: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(x, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    return float(centers[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def mr_iqms(a: np.ndarray) -> list[float]:
    a = a / (np.percentile(a, 99.5) + 1e-6)
    t = otsu(a)
    fg, bg = a[a > t], a[a <= t]
    sd_bg = float(bg.std()) + 1e-6
    t2 = otsu(fg)
    gm, wm = fg[fg <= t2], fg[fg > t2]  # two tissue classes inside the head
    d = abs(float(wm.mean()) - float(gm.mean())) + 1e-6
    cnr = d / np.sqrt(sd_bg ** 2 + gm.var() + wm.var())
    cjv = (gm.std() + wm.std()) / d
    x = np.abs(a.ravel()) + 1e-12
    b = np.sqrt(np.sum(x ** 2))
    efc = float(-np.sum((x / b) * np.log(x / b)) / (len(x) / np.sqrt(len(x)) * np.log(np.sqrt(len(x)))))
    fber = float(np.mean(fg ** 2) / (np.mean(bg ** 2) + 1e-6))
    qi1 = float(np.mean(bg > bg.mean() + 3 * sd_bg))
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(a)))
    sharp = float(grad[a > t].mean() / (fg.mean() + 1e-6))
    return [float(fg.mean() / sd_bg), float(cnr), float(cjv), efc, np.log1p(fber), qi1, sharp,
            float(bg.mean() / (fg.mean() + 1e-6)), float(len(fg) / a.size)]


def qi2(arr: np.ndarray, max_voxels: int = 200_000, seed: int = 0) -> float:
    """QI2-style artefact index (Mortamet et al., MRM 62:365, 2009, https://doi.org/10.1002/mrm.22009; MRIQC's
    ``art_qi2``): how badly the air background departs from pure noise. A chi distribution is fitted to the
    background intensities (magnitude noise is chi/Rician), and the index is the squared error between the
    fitted density and the background histogram above the mode, where ghosts and blurring add signal. Needs the
    native-resolution image: resampling averages the noise statistics away. Higher = more artefact.
    """
    from scipy import ndimage, stats

    a = np.asarray(arr, dtype=np.float32)
    a = a / (float(np.percentile(a, 99.5)) + 1e-6)
    head = a > 0.5 * otsu(np.clip(a, 0, 1))
    head = ndimage.binary_fill_holes(ndimage.binary_closing(head, iterations=2))
    air = ~ndimage.binary_dilation(head, iterations=3)
    bg = a[air]
    if bg.size < 500:
        return 0.0
    if bg.size > max_voxels:
        bg = np.random.default_rng(seed).choice(bg, max_voxels, replace=False)
    bg = bg[bg > 0]
    if bg.size < 500:
        return 0.0
    try:
        df, _, scale = stats.chi.fit(bg, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):  # degenerate background: no fit, no evidence
        return 0.0
    hi = float(np.percentile(bg, 99.9))
    hist, edges = np.histogram(bg, bins=100, range=(0.0, max(hi, 1e-6)), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    pdf = stats.chi.pdf(centres, df, 0.0, scale)
    above = centres > centres[int(np.argmax(pdf))]
    return float(np.sum((hist[above] - pdf[above]) ** 2) * (edges[1] - edges[0]))


def ct_hu_stats(a: np.ndarray) -> list[float]:
    feats: list[float] = []
    for part in np.array_split(a, 3, axis=0):
        body = part[(part > -300) & (part < 1500)]
        if body.size == 0:
            feats += [0.0] * 9
            continue
        feats += [float(v) for v in np.percentile(body, [50, 75, 90, 95, 99, 99.9])]
        feats += [float(np.mean((body > 150) & (body <= 250))), float(np.mean((body > 250) & (body <= 400))),
                  float(np.mean(body > 400))]
    return feats


def coverage_profile(a: np.ndarray, modality: str) -> list[float]:
    if modality == "CT":
        fgm = a > -300
    else:
        scale = np.percentile(a, 99.5) + 1e-6
        fgm = a > otsu(a / scale) * scale
    prof = fgm.reshape(fgm.shape[0], -1).mean(1)
    prof = prof / (prof.max() + 1e-6)
    mean_prof = np.array([s[m].mean() if m.any() else 0.0 for s, m in zip(a, fgm, strict=True)])
    mean_prof = mean_prof / (np.abs(mean_prof).max() + 1e-6)
    return [*prof[:4].tolist(), *prof[-4:].tolist(), *mean_prof[:3].tolist(), *mean_prof[-3:].tolist(),
            float(modality == "CT")]


def features(task: str, row: dict[str, str]) -> np.ndarray:
    from scanqc.series import load_series

    series, _ = load_series(row["path"], modality_hint=row.get("modality") or None)
    vol = series[0].volume
    modality = (row.get("modality") or series[0].modality or "").upper()
    arr, _ = canonicalize(vol)
    if task == "motion":
        return np.array(mr_iqms(resample_fit(arr, (64, 64, 64))), np.float64)
    if task == "contrast_phase":
        return np.array(ct_hu_stats(resample_fit(arr, (48, 64, 64))), np.float64)
    return np.array(coverage_profile(resample_fit(arr, (32, 48, 48)), modality), np.float64)


def _clf(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed)


def fit(task: str, x: np.ndarray, t: np.ndarray, seed: int = 0) -> dict[str, Any]:
    models: dict[str, Any] = {}
    if task in ("motion", "contrast_phase"):
        models["class"] = _clf(seed).fit(x, t[:, 0].astype(int))
        if task == "contrast_phase" and (t[:, 2] > 0.5).any() and len(np.unique(t[t[:, 2] > 0.5, 1])) > 1:
            k = t[:, 2] > 0.5
            models["suboptimal"] = _clf(seed).fit(x[k], t[k, 1].astype(int))
    else:
        for j, e in enumerate(COVERAGE_ENDS):
            models[e] = _clf(seed).fit(x, t[:, j].astype(int))
    return models


def _proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    p = np.zeros((len(x), n_classes))
    p[:, model.classes_.astype(int)] = model.predict_proba(x)
    return p


def predict(task: str, models: dict[str, Any], x: np.ndarray) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if task == "motion":
        p = _proba(models["class"], x, 3)
        for i in range(len(x)):
            out.append({"motion": float(1 - p[i, 0]), "severe": float(p[i, 2]),
                        "probabilities": {k: float(p[i, j]) for j, k in enumerate(MOTION_LABELS)}})
    elif task == "contrast_phase":
        p = _proba(models["class"], x, 4)
        sub = _proba(models["suboptimal"], x, 2)[:, 1] if "suboptimal" in models else np.zeros(len(x))
        for i in range(len(x)):
            out.append({"probabilities": {k: float(p[i, j]) for j, k in enumerate(PHASES)},
                        "predicted": PHASES[int(np.argmax(p[i]))], "suboptimal": float(sub[i])})
    else:
        cols = {e: _proba(models[e], x, 2)[:, 1] for e in COVERAGE_ENDS}
        for i in range(len(x)):
            out.append({f"missing_{e}": float(cols[e][i]) for e in COVERAGE_ENDS})
    return out


BASELINE_THRESHOLDS = {"motion_warn": 0.5, "severe_fail": 0.5, "suboptimal_warn": 0.5,
                       **{f"missing_{e}": {"warn": 0.5, "fail": 0.5} for e in COVERAGE_ENDS}}


def run_baseline(task: str, manifest: str | Path | list, out: str | Path, test_manifest: str | Path | None = None,
                 compare: str | None = "promoted", seed: int = 0) -> dict[str, Any]:
    """Fit on train+val of ``manifest``; report metrics on ``test_manifest`` next to the CNN's."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from scanqc.training.train import read_rows

    rows = [r for r in read_rows(manifest, task) if r.get("split") in ("train", "val")]
    x = np.stack([features(task, r) for r in rows])
    t = np.stack([encode_row(task, r) for r in rows])
    models = fit(task, x, t, seed)
    with (out / "baseline.pkl").open("wb") as fh:
        pickle.dump({"task": task, "models": models, "seed": seed}, fh)
    res: dict[str, Any] = {"task": task, "n_train": len(rows), "features": "training/baseline.py"}
    if test_manifest:
        trows = read_manifest(test_manifest, task, "all")
        xt = np.stack([features(task, r) for r in trows])
        tt = np.stack([encode_row(task, r) for r in trows])
        res["test_manifest"] = str(test_manifest)
        outs = predict(task, models, xt)
        res["baseline"] = task_metrics(task, tt, outs, BASELINE_THRESHOLDS)
        from scanqc.evaluation.quality import constant_output_warning

        if (w := constant_output_warning("baseline", outs)) is not None:  # too few cases for the trees to split
            res["warnings"] = [w]
        if compare:
            from scanqc.models import default_registry
            from scanqc.models.evaluate import evaluate_model

            reg = default_registry()
            model = reg.get(task) if compare == "promoted" else reg.find(task, compare)
            if model is not None:
                res["cnn"] = {"version": model.version, **evaluate_model(model, test_manifest, split="all")}
    (out / "baseline_metrics.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res
