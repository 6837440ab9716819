"""Contrast phase by measurement: fit the classifier over measured HU and export it as an ONNX model.

The check (:mod:`scanqc.checks.contrast_phase`) locates the aorta, IVC, liver and kidneys
(:mod:`scanqc.checks.abdomen_anatomy`) and measures their HU; this module draws domain-randomised
abdominal CTs (:mod:`scanqc.datasets.abdomen`), runs the same localisation on them, and fits

- a multinomial logistic regression (scikit-learn, standardised features) over the four phases, or with
  ``--mlp UNITS`` an ensemble of small ReLU networks (:func:`fit_mlp`; contrast phase 2.4.0), and
- a binary logistic regression for suboptimal enhancement (contrast-enhanced cases),

then writes ``<out>/contrast_phase/<version>/`` with ``model.onnx`` (standardise -> two linear maps ->
``[N, 5]`` logits, the contrast-phase output layout) and a MONAI-bundle-style ``metadata.json`` whose
``preprocessing.mode`` is ``abdomen_hu`` and which also lists the coefficients in plain numbers
(``classifier``), so a reader sees what each HU measurement weighs. Runtime needs onnxruntime only.

    python -m scanqc.training.abdomen_phase --n 320 --seed 0 --out models --version 2.0.0

Version 2.1.0 measures on the segmentation network's localisation (:mod:`scanqc.checks.abdomen_seg`) and takes
:data:`~scanqc.checks.abdomen_anatomy.FEATURES` (20; 2.0.0 took the first 14); held out on ``--val-variant test``
draws of another seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.checks.abdomen_anatomy import FEATURES
from scanqc.inference import PHASES

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def _case(job: tuple[int, int, str, str]) -> dict[str, Any]:
    from scanqc.datasets.abdomen import make_abdomen

    from scanqc.checks.abdomen_anatomy import locate

    seed, index, phase, variant = job
    rng = np.random.default_rng([seed, index, 77])
    enh = "suboptimal" if phase != "non_contrast" and rng.uniform() < 0.3 else "optimal"
    # Coarse grids keep collection fast; the localisation works on a ~3 mm grid whatever the input.
    thick = float(rng.choice([2.5, 3.0, 5.0]))
    px = float(rng.uniform(2.5, 3.0))
    vol, _, info = make_abdomen(rng, phase, enh, variant, spacing=(thick, px, px), thickness=thick)
    an = locate(vol)
    return {"index": index, "phase": phase, "enhancement": enh, "features": an.features().tolist(),
            "in_domain": an.in_domain, "measured": an.hu, "true_hu": info["hu"], "timing": info["timing"]}


def collect(n: int, seed: int, variant: str = "train", workers: int = 2) -> list[dict[str, Any]]:
    """``n`` cases (phases balanced) with their measured features."""
    jobs = [(seed, i, PHASES[i % len(PHASES)], variant) for i in range(n)]
    if workers <= 1:
        return [_case(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_case, jobs, chunksize=2))


def _manifest_case(row: dict[str, str]) -> dict[str, Any]:
    from scanqc.checks.abdomen_anatomy import locate
    from scanqc.series import load_series

    series, _ = load_series(row["path"], modality_hint="CT")
    an = locate(series[0].volume)
    return {"case_id": row["case_id"], "phase": row["label"], "enhancement": row.get("enhancement") or "optimal",
            "split": row.get("split", "train"), "features": an.features().tolist(), "in_domain": an.in_domain,
            "measured": an.hu}


def collect_manifest(manifests: list[Path], workers: int = 2, limit: int | None = None) -> list[dict[str, Any]]:
    """Features of every contrast_phase row of the manifests (``scanqc data generate --generator abdomen``)."""
    from scanqc.models.evaluate import read_manifest

    rows = [r for m in manifests for r in read_manifest(m, "contrast_phase", "all")]
    rows = sorted(rows, key=lambda r: r["case_id"])[:limit] if limit else rows
    if workers <= 1:
        return [_manifest_case(r) for r in rows]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_manifest_case, rows, chunksize=2))


def feature_matrix(rows: list[dict[str, Any]], names: list[str] | tuple[str, ...]) -> np.ndarray:
    """The named columns of the collected feature vectors (each row holds every :data:`FEATURES` it was
    collected with, in that order)."""
    idx = [FEATURES.index(n) for n in names]
    return np.array([[r["features"][i] for i in idx] for r in rows], np.float64)


#: The collecting-system measurements (abdomen_seg >= 1.1.0) that :func:`excretion_twins` replaces.
CS_FEATURES = ("collecting_system", "collecting_system_p90", "collecting_minus_kidney_p50", "collecting_found")


def excretion_twins(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The training rows with every delayed row once more as a patient whose kidneys have not excreted yet.

    When excreted contrast reaches the renal pelvis depends on renal function and hydration, not only on the time
    after injection: a delayed scan (2-5 min) can show urine there. scanqc's generator always excretes by then,
    so a classifier fit on it reads "no contrast in the collecting system" as "not delayed" (the blind family's
    delayed scans then go to portal venous: docs/model-quality.md). The twin keeps every vascular and parenchymal
    measurement and takes the collecting-system ones of a random portal-venous row (urine; where that row found
    no collecting system, this row's own fallback: the parenchyma's median, flagged). Every other row appears
    twice, so the phases keep their balance. The twins are marked ``"twin": True``.
    """
    idx = {n: FEATURES.index(n) for n in (*CS_FEATURES, "kidney_p50")}
    donors = [r for r in rows if r["phase"] == "portal_venous"]
    if not donors:
        raise SystemExit("--excretion-twins needs portal-venous training rows")
    rng = np.random.default_rng([seed, 5])
    twins = []
    for r in rows:
        if r["phase"] != "delayed":
            twins.append(r)
            continue
        d = donors[int(rng.integers(len(donors)))]["features"]
        f = list(r["features"])
        k50 = f[idx["kidney_p50"]]
        found = bool(d[idx["collecting_found"]])
        cs, cs90 = (d[idx["collecting_system"]], d[idx["collecting_system_p90"]]) if found else (k50, k50)
        f[idx["collecting_system"]], f[idx["collecting_system_p90"]] = cs, cs90
        f[idx["collecting_minus_kidney_p50"]], f[idx["collecting_found"]] = cs - k50, float(found)
        twins.append({**r, "features": f, "twin": True})
    return rows + twins


def fit(rows: list[dict[str, Any]], c: float = 1.0, names: list[str] | tuple[str, ...] = FEATURES,
        mlp: tuple[int, float, int] | None = None) -> dict[str, Any]:
    """Standardisation + multinomial LR over phases + binary LR over suboptimal enhancement, on ``names``.

    ``mlp`` = (units, alpha, k): the phase from ``k`` one-hidden-layer ReLU networks instead (scikit-learn
    ``MLPClassifier``, L2 ``alpha``, seeds 0..k-1) over the standardised features, their logits averaged: one
    network with the members' hidden units side by side and the output weights divided by k; the model then also
    carries ``clip``, each feature's training range, which the graph clips its input into."""
    from sklearn.linear_model import LogisticRegression

    x = feature_matrix(rows, names)
    y = np.array([PHASES.index(r["phase"]) for r in rows])
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    if mlp is None:
        lr = LogisticRegression(C=c, max_iter=5000).fit(z, y)
        head: dict[str, Any] = {"phase_coef": lr.coef_.tolist(), "phase_intercept": lr.intercept_.tolist()}
    else:
        # A ReLU network extrapolates beyond its training rows in ways nothing constrained (a regression at least
        # stays monotone): the graph clips each measurement into the range it was fit on.
        head = {"phase_mlp": _mlp_head(z, y, *mlp), "clip": {"min": x.min(0).tolist(), "max": x.max(0).tolist()}}
    enhanced = y > 0
    sub_y = np.array([r["enhancement"] == "suboptimal" for r in rows])[enhanced]
    sub = LogisticRegression(C=c, max_iter=5000).fit(z[enhanced], sub_y)
    return {"features": list(names), "mean": mean.tolist(), "std": std.tolist(), **head,
            "suboptimal_coef": sub.coef_[0].tolist(), "suboptimal_intercept": float(sub.intercept_[0]),
            "C": c, "n": len(rows)}


def _mlp_head(z: np.ndarray, y: np.ndarray, hidden: int, alpha: float, ensemble: int) -> dict[str, Any]:
    from sklearn.neural_network import MLPClassifier

    nets = [MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=3000, random_state=k).fit(z, y)
            for k in range(ensemble)]
    if any(list(n.classes_) != list(range(len(PHASES))) for n in nets):
        raise SystemExit("every phase must be in the training rows")
    return {"hidden": hidden, "alpha": alpha, "ensemble": ensemble, "activation": "relu",
            "w1": np.concatenate([n.coefs_[0] for n in nets], 1).tolist(),
            "b1": np.concatenate([n.intercepts_[0] for n in nets]).tolist(),
            "w2": (np.concatenate([n.coefs_[1] for n in nets], 0) / ensemble).tolist(),
            "b2": (np.mean([n.intercepts_[1] for n in nets], 0)).tolist()}


def fit_mlp(rows: list[dict[str, Any]], hidden: int = 32, alpha: float = 1.0, ensemble: int = 5, c: float = 3.0,
            names: list[str] | tuple[str, ...] = FEATURES) -> dict[str, Any]:
    """:func:`fit` with the phase from ``ensemble`` averaged ReLU networks of ``hidden`` units; the suboptimal
    head stays the logistic regression (C = ``c``)."""
    return fit(rows, c, names, mlp=(hidden, alpha, ensemble))


def _phase_logits(clf: dict[str, Any], z: np.ndarray) -> np.ndarray:
    mlp = clf.get("phase_mlp")
    if mlp is None:
        return z @ np.asarray(clf["phase_coef"]).T + np.asarray(clf["phase_intercept"])
    h = np.maximum(z @ np.asarray(mlp["w1"]) + np.asarray(mlp["b1"]), 0.0)
    return h @ np.asarray(mlp["w2"]) + np.asarray(mlp["b2"])


def logits_numpy(clf: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The ONNX graph in numpy (parity reference): ``[N, F]`` features -> ``[N, 5]`` logits."""
    x = np.asarray(x, np.float64)
    if "clip" in clf:
        x = np.clip(x, np.asarray(clf["clip"]["min"], np.float32), np.asarray(clf["clip"]["max"], np.float32))
    z = (x - np.asarray(clf["mean"])) / np.asarray(clf["std"])
    ph = _phase_logits(clf, z)
    sub = z @ np.asarray(clf["suboptimal_coef"]) + clf["suboptimal_intercept"]
    return np.concatenate([ph, sub[:, None]], axis=1).astype(np.float32)


def to_onnx(clf: dict[str, Any], path: Path) -> None:
    """Write the classifier as ONNX: input ``image`` ``[N, 1, 1, 1, F]``, output ``logits`` ``[N, 5]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = len(clf["features"])
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(clf["mean"]), "mean"),
             numpy_helper.from_array(f32(1.0 / np.asarray(clf["std"])), "inv_std"),
             numpy_helper.from_array(np.array([-1, f], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["image", "flat_shape"], ["x"])]
    if "clip" in clf:  # each measurement into its training range (Max, then Min: per-feature bounds)
        inits += [numpy_helper.from_array(f32(clf["clip"]["min"]), "lo"),
                  numpy_helper.from_array(f32(clf["clip"]["max"]), "hi")]
        nodes += [helper.make_node("Max", ["x", "lo"], ["x_lo"]), helper.make_node("Min", ["x_lo", "hi"], ["x_in"])]
    nodes += [helper.make_node("Sub", ["x_in" if "clip" in clf else "x", "mean"], ["xc"]),
              helper.make_node("Mul", ["xc", "inv_std"], ["xz"])]
    mlp = clf.get("phase_mlp")
    if mlp is None:  # one linear map for the phases and the suboptimal logit
        w = np.concatenate([np.asarray(clf["phase_coef"]).T, np.asarray(clf["suboptimal_coef"])[:, None]], axis=1)
        b = np.concatenate([np.asarray(clf["phase_intercept"]), [clf["suboptimal_intercept"]]])
        inits += [numpy_helper.from_array(f32(w), "W"), numpy_helper.from_array(f32(b), "b")]
        nodes += [helper.make_node("MatMul", ["xz", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    else:  # phases: hidden ReLU layer -> 4 logits; suboptimal: its linear map; side by side
        for name, v in (("W1", mlp["w1"]), ("b1", mlp["b1"]), ("W2", mlp["w2"]), ("b2", mlp["b2"]),
                        ("Ws", np.asarray(clf["suboptimal_coef"])[:, None]), ("bs", [clf["suboptimal_intercept"]])):
            inits.append(numpy_helper.from_array(f32(v), name))
        nodes += [helper.make_node("MatMul", ["xz", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
                  helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["p0"]),
                  helper.make_node("Add", ["p0", "b2"], ["phase"]), helper.make_node("MatMul", ["xz", "Ws"], ["s0"]),
                  helper.make_node("Add", ["s0", "bs"], ["sub"]),
                  helper.make_node("Concat", ["phase", "sub"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "scanqc_contrast_phase_hu",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 1, 1, f])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scanqc")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score 95 % interval of a proportion k / n (Wilson 1927)."""
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(float(c - h), 4), round(float(c + h), 4)]


def accuracy(clf: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over all rows; a row the localisation put outside the domain counts as wrong (the check would
    skip it). Overall: stratified bootstrap 95 % interval; per phase: Wilson interval."""
    from scanqc.evaluation.metrics import bootstrap_ci

    x = feature_matrix(rows, clf["features"])
    y = np.array([PHASES.index(r["phase"]) for r in rows])
    pred = logits_numpy(clf, x)[:, :4].argmax(1)
    ok = np.array([bool(r.get("in_domain", True)) for r in rows])
    pred = np.where(ok, pred, -1)
    correct = (pred == y).astype(float)
    per = {p: {"n": int(np.sum(y == i)), "accuracy": round(float(correct[y == i].mean()), 4) if (y == i).any()
               else None, "ci95": wilson(int(correct[y == i].sum()), int(np.sum(y == i)))}
           for i, p in enumerate(PHASES)}
    return {"n": len(rows), "accuracy": round(float(correct.mean()), 4),
            "accuracy_ci95": bootstrap_ci(lambda t, c: float(np.mean(c)), y, correct),
            "per_phase": per, "outside_domain": int((~ok).sum()),
            "confusion": {p: {q: int(np.sum((y == i) & (pred == j))) for j, q in enumerate(PHASES)}
                          for i, p in enumerate(PHASES)}}


def export(clf: dict[str, Any], out: Path, version: str, train_info: dict[str, Any], val: dict[str, Any],
           changelog: str) -> Path:
    import onnx
    import onnxruntime
    import sklearn
    from scanqc.training.export import _channel_def

    from scanqc.preprocessing import PreprocessSpec

    folder = Path(out) / "contrast_phase" / version
    folder.mkdir(parents=True, exist_ok=True)
    to_onnx(clf, folder / "model.onnx")
    # Parity: onnxruntime against the numpy reference on the training features.
    from scanqc.inference import make_session

    x = np.array(train_info.pop("_x"), np.float32)
    sess = make_session(folder / "model.onnx", 1)
    got = sess.run(None, {"image": x.reshape(len(x), 1, 1, 1, -1)})[0]
    diff = float(np.abs(got - logits_numpy(clf, x)).max())
    data = (folder / "model.onnx").read_bytes()
    f = len(clf["features"])
    prep = {"shape": [1, 1, f], "mode": "abdomen_hu", "modalities": ["CT"], "version": 1, "in_channels": 1,
            "localisation": _network_version(), "features": list(clf["features"])}
    meta = {
        "schema": SCHEMA,
        "name": "scanqc_contrast_phase", "task": "contrast_phase", "version": version,
        "changelog": {version: changelog},
        "monai_version": "not used", "pytorch_version": "not used (scikit-learn over measured HU, exported with onnx "
                                                          "directly)", "numpy_version": np.__version__,
        "required_packages_version": {"onnxruntime": ">=1.17"},
        "optional_packages_version": {"python": platform.python_version(), "onnx": onnx.__version__,
                                      "onnxruntime": onnxruntime.__version__, "scikit_learn": sklearn.__version__},
        "description": "Abdominal CT contrast phase (non-contrast / arterial / portal venous / delayed) and suboptimal "
                       "enhancement, classified from HU measured at the located aorta, IVC, liver and kidneys",
        "authors": "scanqc contributors", "copyright": "Apache-2.0",
        "data_source": "scanqc.datasets.abdomen domain-randomised abdominal CT (see training)",
        "data_type": "nifti", "image_classes": f"{f} measured HU features, see preprocessing",
        "label_classes": ", ".join([*PHASES, "suboptimal"]), "labels": [*PHASES, "suboptimal"],
        "network": _network_card(clf),
        "network_data_format": {
            "inputs": {"image": {"type": "features", "format": "hu", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [1, 1, f], "dtype": "float32", "value_range": [],
                                 "is_patch_data": False, "channel_def": _channel_def(PreprocessSpec.from_dict(prep))}},
            "outputs": {"logits": {"type": "logits", "format": "classes", "num_channels": 5, "spatial_shape": [5],
                                   "dtype": "float32", "value_range": [], "is_onehot": False,
                                   "channel_def": {str(i): n for i, n in enumerate([*PHASES, "suboptimal"])}}}},
        "preprocessing": prep,
        "calibration": {"method": "none (softmax of the classifier's logits)", "temperature": 1.0},
        "thresholds": {"rule": "suboptimal warn at P >= 0.5; a phase mismatch fails at P >= 0.5",
                       "suboptimal_warn": 0.5, "mismatch_fail_confidence": 0.5},
        "classifier": clf,
        "domain": {"modality": "CT", "region": "abdomen (liver and/or kidneys in view)",
                   "slice_thickness_mm": [0.6, 5.0], "gate": "scanqc.checks.abdomen_anatomy.locate().in_domain"},
        "metrics": {"validation": val},
        "training": {**train_info, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")},
        "onnx": {"file": "model.onnx", "exporter": "onnx.helper", "opset": 17, "input": "image", "output": "logits",
                 "parity_max_abs_diff": diff, "parity_cases": len(x), "parity_tolerance": 1e-4,
                 "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
    }
    if diff > 1e-4:
        raise SystemExit(f"ONNX parity failed: max abs diff {diff}")
    from scanqc.training.export import validate_metadata, write_metadata_props

    validate_metadata(meta)
    write_metadata_props(folder / "model.onnx", meta)  # every key also in the ONNX metadata_props
    data = (folder / "model.onnx").read_bytes()
    meta["onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _network_card(clf: dict[str, Any]) -> dict[str, Any]:
    f = len(clf["features"])
    mlp = clf.get("phase_mlp")
    if mlp is None:
        return {"class": "multinomial logistic regression (scikit-learn) exported as ONNX", "parameters": 5 * (f + 1)}
    units = len(mlp["b1"])
    return {"class": f"phase: mean logits of {mlp['ensemble']} one-hidden-layer ReLU networks ({mlp['hidden']} units, "
                     f"L2 alpha {mlp['alpha']}; scikit-learn MLPClassifier); suboptimal: logistic regression; "
                     "exported as ONNX", "parameters": units * (f + 1) + 4 * (units + 1) + f + 1}


def _network_meta() -> dict[str, Any] | None:
    from scanqc.checks import abdomen_seg

    if abdomen_seg.available():
        return json.loads((abdomen_seg.MODEL_DIR / "metadata.json").read_text())
    return None


def _network_version() -> str:
    """The abdomen_seg version the features were measured with (the served check measures with the same)."""
    meta = _network_meta()
    return meta["version"] if meta else ""


def _localisation() -> str:
    meta = _network_meta()
    if meta:
        return f"segmentation network abdomen_seg {meta['version']} (sha256 {meta['onnx']['sha256'][:12]})"
    return "hand-written rules (scanqc.checks.abdomen_anatomy.locate_rules)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, action="append", default=[],
                    help="generated manifest(s) to train on (split column: train / val); else draw --n cases")
    ap.add_argument("--limit", type=int, default=None, help="first N manifest rows only")
    ap.add_argument("--n", type=int, default=320, help="training cases (phases balanced)")
    ap.add_argument("--n-val", type=int, default=80, help="validation cases (other seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-seed", type=int, default=None, help="seed of the held-out draws (default seed + 1)")
    ap.add_argument("--val-variant", default="train", choices=("train", "test"),
                    help="generator variant of the held-out draws (test: habitus, organ size, noise outside the "
                         "training ranges)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of both regressions")
    ap.add_argument("--mlp", type=int, default=0, metavar="UNITS",
                    help="phase from an ensemble of one-hidden-layer networks of UNITS units (default 0: the "
                         "logistic regression)")
    ap.add_argument("--alpha", type=float, default=1.0, help="--mlp: L2 penalty")
    ap.add_argument("--ensemble", type=int, default=5, help="--mlp: networks averaged (seeds 0..k-1)")
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--version", default="2.0.0")
    ap.add_argument("--features", default=None, help="comma-separated FEATURES the classifier takes (default: all)")
    ap.add_argument("--excretion-twins", action="store_true",
                    help="fit on every delayed row twice, once with a portal-venous row's collecting system "
                         "(late excretion; excretion_twins)")
    ap.add_argument("--features-cache", type=Path, default=None, help="JSON of collected cases (reused if present)")
    ap.add_argument("--changelog", default="contrast phase by measurement: HU at the located aorta, IVC, liver and "
                                           "kidneys -> logistic regression; trained on scanqc.datasets.abdomen")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.features_cache and a.features_cache.is_file():
        cached = json.loads(a.features_cache.read_text())
        rows, val_rows = cached["train"], cached["val"]
    elif a.manifest:
        got = collect_manifest(a.manifest, a.workers, a.limit)
        rows = [r for r in got if r["split"] != "val"]
        val_rows = [r for r in got if r["split"] == "val"]
        if a.features_cache:
            a.features_cache.write_text(json.dumps({"train": rows, "val": val_rows}, default=float))
    else:
        rows = collect(a.n, a.seed, "train", a.workers)
        val_rows = collect(a.n_val, a.val_seed if a.val_seed is not None else a.seed + 1, a.val_variant,
                           a.workers)
        if a.features_cache:
            a.features_cache.write_text(json.dumps({"train": rows, "val": val_rows}, default=float))
    gen_s = time.perf_counter() - t0
    rows = [r for r in rows if r.get("in_domain", True)]  # the check never classifies those
    names = [n.strip() for n in a.features.split(",")] if a.features else list(FEATURES)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; measured: {', '.join(FEATURES)}")
    fit_rows = excretion_twins(rows, a.seed) if a.excretion_twins else rows
    clf = fit_mlp(fit_rows, a.mlp, a.alpha, a.ensemble, a.C, names) if a.mlp else fit(fit_rows, a.C, names)
    val = accuracy(clf, val_rows)
    print(json.dumps({"train": accuracy(clf, rows), "validation": val}, indent=1), file=sys.stderr)
    args = shlex.join(str(v) for v in (argv if argv is not None else sys.argv[1:]))  # re-runnable
    from scanqc.models.evaluate import manifest_sha256
    from scanqc.training.export import portable_training

    manifests = [{"path": str(m), "sha256": manifest_sha256(m)} for m in a.manifest]
    info = {"command": f"python -m scanqc.training.abdomen_phase {args}", "manifests": manifests,
            "seed": a.seed, "n_train": len(rows), "n_val": len(val_rows),
            "excretion_twins": sum(1 for r in fit_rows if r.get("twin")), "generator": "scanqc.datasets.abdomen",
            "variant": "train", "validation_variant": a.val_variant,
            "validation_seed": a.val_seed if a.val_seed is not None else a.seed + 1,
            "localisation": _localisation(), "collect_seconds": round(gen_s, 1),
            "_x": feature_matrix(rows, names).tolist()}
    x = info.pop("_x")
    info = {**portable_training(info, Path.cwd()), "_x": x}  # no machine paths in a shipped artifact
    folder = export(clf, a.out, a.version, info, val, a.changelog)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
