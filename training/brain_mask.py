"""Brain-mask network for brain-MR coverage by geometry (issue 19; SynthStrip-style, Hoopes et al. 2022).

A small MONAI UNet segments the *required* brain (vertex to the bottom of the cerebellum: the mask the coverage
labels use, :func:`scanqc.datasets.base.required_brain_mask`) on the coarse grid of
:data:`scanqc.checks.brain_coverage.SPEC`; the coverage check then decides from the mask's geometry
(:mod:`scanqc.checks.brain_coverage`). Training data are domain-randomised heads
(:func:`scanqc.datasets.head.acquire_head`: every non-label parameter drawn: contrast incl. fully random
per-label intensities, orientation, 2D/3D, slice thickness, bias, noise, field of view) and, at training time,
random superior-inferior crops that cut the brain at either end, keep it with a few mm, or keep the whole FOV.

The stored cache holds each head's in-plane pass of :func:`scanqc.preprocessing.resample_fit`
(:func:`~scanqc.preprocessing.resample_inplane`); a crop of those slices followed by
:func:`~scanqc.preprocessing.resample_slices` and :func:`~scanqc.preprocessing.normalize_mr` is the same
arithmetic as :func:`scanqc.preprocessing.preprocess` on the cropped series (tested), so training and serving
share one implementation at a fraction of the cost.

    python -m scanqc.training.brain_mask cache --n 400 --seed 500 --out runs/bm/cache-train
    python -m scanqc.training.brain_mask train --cache runs/bm/cache-train --out runs/bm/run --minutes 40
    python -m scanqc.training.brain_mask cache --n 80 --seed 600 --out runs/bm/cache-val
    python -m scanqc.training.brain_mask select --run runs/bm/run --cache runs/bm/cache-val
    python -m scanqc.training.brain_mask export --run runs/bm/run --out models --version 2.1.0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.checks.brain_coverage import SPEC
from scanqc.preprocessing import canonicalize, normalize_mr, resample_inplane, resample_slices
from scanqc.volume import Volume

CACHE_SALT = 4242  # case seeds: default_rng([seed, index, CACHE_SALT])


# ----------------------------------------------------------------------------------------------- data
def head_case(seed: int, index: int, variant: str = "train") -> dict[str, Any]:
    """One acquired head in canonical (IPL) order: in-plane-resampled image and required-brain share."""
    from scanqc.datasets.head import acquire_head

    rng = np.random.default_rng([seed, index, CACHE_SALT])
    vol, req, prov = acquire_head(rng, variant, None, random_contrast_rate=0.4)
    arr, spacing = canonicalize(vol)
    m, _ = canonicalize(vol.with_array(req.astype(np.float32)))
    yx = SPEC.shape[1:]
    return {"image": resample_inplane(arr, yx, SPEC.antialias).astype(np.float32),
            "mask": resample_inplane(m, yx, SPEC.antialias).astype(np.float16),
            "spacing": np.asarray(spacing, np.float32),
            "contrast": str(prov.get("contrast")), "orientation": str(prov.get("orientation"))}


def write_cache(out: Path, n: int, seed: int, variant: str = "train") -> None:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        f = out / f"head-{i:05d}.npz"
        if f.exists():
            continue
        c = head_case(seed, i, variant)
        np.savez(f, **c)
        if i % 10 == 0:
            print(f"{i + 1}/{n} {time.perf_counter() - t0:.0f} s", flush=True)
    (out / "cache.json").write_text(json.dumps({"n": n, "seed": seed, "variant": variant, "grid": list(SPEC.shape)}))


def load_cache(folder: Path) -> list[dict[str, Any]]:
    return [dict(np.load(f)) for f in sorted(Path(folder).glob("head-*.npz"))]


def brain_span(mask_inplane: np.ndarray) -> tuple[int, int]:
    """First and last native slice (axis 0, superior first) holding required brain."""
    idx = np.flatnonzero(mask_inplane.reshape(len(mask_inplane), -1).max(1) > 0.05)
    return int(idx[0]), int(idx[-1])


def random_crop(rng: np.random.Generator, case: dict[str, Any]) -> tuple[int, int, str]:
    """[lo, hi) native slices: as acquired, full with a few mm, or cut at the superior / inferior end."""
    n = len(case["image"])
    sp = float(case["spacing"][0])
    b0, b1 = brain_span(case["mask"])
    ext = b1 - b0 + 1
    kind = str(rng.choice(["acquired", "full", "superior", "inferior", "both"], p=[0.2, 0.25, 0.25, 0.25, 0.05]))

    def margin() -> int:
        return max(1, int(np.ceil(float(rng.uniform(2.0, 30.0)) / sp)))

    def cut() -> int:
        return max(1, round(float(rng.uniform(0.01, 0.4)) * ext))

    lo, hi = 0, n
    if kind == "full":
        lo, hi = max(0, b0 - margin()), min(n, b1 + 1 + margin())
    if kind in ("superior", "both"):
        lo = b0 + cut()
    elif kind == "inferior":
        lo = max(0, b0 - margin()) if rng.uniform() < 0.6 else 0
    if kind in ("inferior", "both"):
        hi = b1 + 1 - cut()
    elif kind == "superior":
        hi = min(n, b1 + 1 + margin()) if rng.uniform() < 0.6 else n
    if hi - lo < 12:
        lo, hi = 0, n
    return lo, hi, kind


def make_pair(case: dict[str, Any], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Network input [1, D, H, W] (as :func:`preprocess` makes it) and binary target [1, D, H, W]."""
    d = SPEC.shape[0]
    img = resample_slices(case["image"][lo:hi], d, SPEC.antialias)
    x = normalize_mr(img, SPEC.mr_percentiles, SPEC.mr_clip)
    y = resample_slices(case["mask"][lo:hi].astype(np.float32), d, SPEC.antialias) > 0.5
    return x[None], y[None].astype(np.float32)


# ----------------------------------------------------------------------------------------------- network
def build_net():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=1, norm="batch")


def train(cache: Path, out: Path, minutes: float, seed: int = 0, batch: int = 4, lr: float = 3e-3) -> None:
    import torch
    from monai.losses import DiceCELoss

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cases = load_cache(cache)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(sigmoid=True, squared_pred=True)
    out.mkdir(parents=True, exist_ok=True)
    t0, step, hist = time.perf_counter(), 0, []
    budget = minutes * 60.0
    while time.perf_counter() - t0 < budget:
        frac = (time.perf_counter() - t0) / budget
        for g in opt.param_groups:  # cosine decay to 5 % of the initial rate over the time budget
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        xs, ys = [], []
        for _ in range(batch):
            c = cases[int(rng.integers(len(cases)))]
            lo, hi, _ = random_crop(rng, c)
            x, y = make_pair(c, lo, hi)
            if rng.uniform() < 0.5:  # left-right flip: heads are near-symmetric, the label map is
                x, y = x[..., ::-1], y[..., ::-1]
            g = float(np.exp(rng.uniform(-0.3, 0.3)))  # display gamma on top of the generator's own
            x = np.sign(x) * np.abs(x) ** g
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        net.train()
        xb, yb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss))
        step += 1
        if step % 50 == 0:
            print(f"step {step} {time.perf_counter() - t0:.0f} s loss {np.mean(hist[-50:]):.4f}", flush=True)
            torch.save(net.state_dict(), out / "net.pt")
    torch.save(net.state_dict(), out / "net.pt")
    summary = {"steps": step, "batch": batch, "lr": lr, "seed": seed, "minutes": minutes, "cases": len(cases),
               "cache": json.loads((cache / "cache.json").read_text()) if (cache / "cache.json").exists() else {},
               "final_loss": float(np.mean(hist[-50:])), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))


def load_net(run: Path):
    import torch

    net = build_net()
    net.load_state_dict(torch.load(run / "net.pt", map_location="cpu"))
    return net.eval()


# ----------------------------------------------------------------------------------------------- selection
def val_draws(cases: list[dict[str, Any]], seed: int, per_case: int = 3) -> list[tuple[int, int, int, str]]:
    """Validation crops as the coverage labels define them: (case, lo, hi, end) with end full/superior/inferior.
    Full keeps >= 3 mm (>= 1 slice) beyond the brain at both ends; a cut removes 3-30 % (>= 2 slices) of it,
    as :func:`scanqc.datasets.head.head_coverage_case` does."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for i, c in enumerate(cases):
        n, sp = len(c["image"]), float(c["spacing"][0])
        b0, b1 = brain_span(c["mask"])
        ext = b1 - b0 + 1
        for end in ("full", "superior", "inferior")[:per_case]:
            m0, m1 = (max(1, int(np.ceil(float(rng.uniform(3.0, 30.0)) / sp))) for _ in range(2))
            k = min(max(2, round(float(rng.uniform(0.03, 0.3)) * ext)), ext - 2)
            lo, hi = max(0, b0 - m0), min(n, b1 + 1 + m1)
            if end == "superior":
                lo = b0 + k
            if end == "inferior":
                hi = b1 + 1 - k
            out.append((i, lo, hi, end))
    return out


def predict_probs(net, xs: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(xs))).numpy()[:, 0]


def select(run: Path, cache: Path, seed: int = 600) -> dict[str, Any]:
    """Cut threshold (end-slice cross-section / largest cross-section) that maximises validation accuracy."""
    import torch

    from scanqc.checks import brain_coverage as bc

    torch.set_num_threads(1)
    net = load_net(run)
    cases = load_cache(cache)
    draws = val_draws(cases, seed)
    feats, ends, dice = [], [], []
    for i, lo, hi, end in draws:
        x, y = make_pair(cases[i], lo, hi)
        p = predict_probs(net, x[None])[0]
        g = bc.end_fractions(p)
        feats.append(g)
        ends.append(end)
        pm = p > 0.5
        dice.append(2 * float((pm & (y[0] > 0)).sum()) / max(1.0, float(pm.sum() + y[0].sum())))
    f = np.asarray(feats)
    e = np.asarray(ends)
    truth = {"superior": e == "superior", "inferior": e == "inferior"}
    grid = np.round(np.arange(0.01, 0.6, 0.005), 3)  # from 1 % of the largest section: a few grid voxels
    thr, curves, plateaus = {}, {}, {}
    for j, end in enumerate(("superior", "inferior")):
        # Each end's decision on its own: accuracy of "this end is cut" over every draw (the other end's
        # draws and the full ones are its negatives).
        acc = np.array([float(((f[:, j] >= t) == truth[end]).mean()) for t in grid])
        best = np.flatnonzero(acc >= acc.max() - 1e-9)
        thr[end] = float(grid[best[len(best) // 2]])  # middle of the best plateau
        curves[end] = {str(t): float(a) for t, a in zip(grid.tolist(), acc)}
        plateaus[end] = [float(grid[best[0]]), float(grid[best[-1]])]
    flag = np.stack([f[:, 0] >= thr["superior"], f[:, 1] >= thr["inferior"]], 1)
    ok = np.all(flag == np.stack([truth["superior"], truth["inferior"]], 1), axis=1)
    res = {"threshold": thr, "accuracy_at_threshold": float(ok.mean()), "n": len(draws), "plateau": plateaus,
           "dice_mean": float(np.mean(dice)),
           "by_end": {k: float(ok[e == k].mean()) for k in ("full", "superior", "inferior")},
           "end_fraction_percentiles": {k: np.round(np.percentile(f[e == k], [0, 5, 50, 95, 100], axis=0), 4).tolist()
                                        for k in ("full", "superior", "inferior")},
           "curve": curves,
           "cache": json.loads((cache / "cache.json").read_text()) if (cache / "cache.json").exists() else {}}
    (run / "select.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "curve"}, indent=2))
    return res


# ----------------------------------------------------------------------------------------------- export
def build_metadata(version: str, selection: dict[str, Any], summary: dict[str, Any], parity: float, n_parity: int,
                   n_params: int, ct_delegate: str, command: str) -> dict[str, Any]:
    """coverage/<version>/metadata.json (MONAI bundle schema + scanqc fields; :func:`read_metadata` reads it)."""
    from scanqc.training.export import MONAI_SCHEMA
    from scanqc.training.train import library_versions

    from scanqc.checks import brain_coverage as bc
    from scanqc.inference import TASK_OUTPUTS

    libs = library_versions()
    labels = list(TASK_OUTPUTS["coverage"])
    val = {k: selection[k] for k in ("n", "accuracy_at_threshold", "plateau", "by_end", "dice_mean",
                                     "end_fraction_percentiles")}
    return {
        "schema": MONAI_SCHEMA, "name": "scanqc_coverage", "task": "coverage", "version": version,
        "changelog": {version: "brain MR coverage from geometry: a UNet locates the required brain, the end slices' "
                               f"brain cross-section decides; abdominal CT delegated to coverage {ct_delegate}"},
        "monai_version": libs.get("monai"), "pytorch_version": libs.get("torch"), "numpy_version": libs.get("numpy"),
        "required_packages_version": {"onnxruntime": ">=1.17"},
        "optional_packages_version": {k: v for k, v in libs.items() if k not in ("monai", "torch", "numpy")},
        "description": "Anatomical coverage. Brain MR: a MONAI UNet segments the required brain (vertex to the bottom "
                       "of the cerebellum); an end is cut when the brain's cross-section in the end slice is a "
                       "substantial share of its largest one; distances to both ends reported. Abdominal CT: the "
                       f"coverage CNN {ct_delegate} (delegate).",
        "authors": "scanqc contributors", "copyright": "Apache-2.0",
        "data_source": "scanqc.datasets.head domain-randomised heads (training/brain_mask.py)",
        "data_type": "numpy", "image_classes": "1-channel float32 MR volume, see preprocessing",
        "label_classes": ", ".join(labels), "labels": labels,
        "postprocess": bc.POSTPROCESS,
        "geometry": {"cut_fraction": {k: float(v) for k, v in selection["threshold"].items()},
                     "rule": "an end is cut when the largest brain component's cross-section in the end grid slice "
                             "is >= cut_fraction[end] x its largest cross-section",
                     "selected_on": selection.get("cache", {}), "validation": val,
                     "curve": selection.get("curve", {})},
        "delegate": {"CT": ct_delegate},
        "network": {"class": "monai.networks.nets.UNet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                    "num_res_units": 1, "norm": "BATCH", "parameters": n_params},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": list(SPEC.shape), "dtype": "float32", "value_range": [-0.5, 2.0],
                                 "is_patch_data": False, "channel_def": {"0": "MR percentile-normalised"}}},
            "outputs": {"logits": {"type": "image", "format": "segmentation", "num_channels": 1,
                                   "spatial_shape": list(SPEC.shape), "dtype": "float32", "value_range": [],
                                   "is_onehot": False, "channel_def": {"0": "required brain (logit)"}}}},
        "preprocessing": SPEC.to_dict(),
        "calibration": {},
        "thresholds": {"rule": "cut_score(end fraction): geometry.cut_fraction maps to 0.5",
                       "missing_superior": {"warn": 0.5, "fail": 0.5}, "missing_inferior": {"warn": 0.5, "fail": 0.5}},
        "domain": {"modalities": ["MR", "CT"], "regions": ["brain", "abdomen"], "max_spacing_mm": 8.0,
                   "min_extent_mm": 40.0,
                   "brain_mask": {"modality": "MR", "body": "head: scalp, skull, face; neck in or out",
                                  "contrasts": "T1 (MPRAGE, SE), T2, PD, FLAIR priors and fully random per label",
                                  "orientations": ["axial", "sagittal", "coronal"], "acquisitions": ["2D", "3D"],
                                  "voxel_mm": [2.0, 6.0]}},
        "metrics": {"validation": {"n": selection["n"], "accuracy": selection["accuracy_at_threshold"],
                                   "by_end": selection["by_end"], "dice_mean": selection["dice_mean"],
                                   "estimate": "in-sample: cut_fraction chosen on these draws (optimistic)"}},
        "training": {"command": command, "date": time.strftime("%Y-%m-%d"),
                     "data": "scanqc.datasets.head.acquire_head (variant train, random_contrast_rate 0.4) + random "
                             "superior-inferior crops", "recipe": "training/recipes/coverage_2.1.0.sh",
                     "device": "cpu (1 thread)", **summary},
        "onnx": {"file": "model.onnx", "exporter": "torchscript", "opset": 17, "input": "image", "output": "logits",
                 "parity_max_abs_diff": parity, "parity_cases": n_parity, "parity_tolerance": 1e-4,
                 "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def export(run: Path, out_root: Path, version: str, ct_delegate: str = "2.0.0", command: str = "",
           test_manifest: Path | None = None) -> Path:
    """``out_root/coverage/<version>``: model.onnx (the brain-mask UNet, parity-checked against torch on real
    inputs) and metadata.json; abdominal CT is delegated to the coverage CNN ``ct_delegate``."""
    import hashlib

    import torch
    from scanqc.training.export import validate_metadata, write_metadata_props

    from scanqc.inference import OnnxModel

    net = load_net(run)
    sel = json.loads((run / "select.json").read_text())
    summ = json.loads((run / "train_summary.json").read_text())
    dest = out_root / "coverage" / version
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    torch.onnx.export(net, (torch.zeros((1, 1, *SPEC.shape)),), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    # Parity on real inputs: whole acquired heads of a seed used nowhere else.
    rng = np.random.default_rng(9000)
    pairs = []
    for j in range(3):
        c = head_case(9000, j)
        lo, hi, _ = random_crop(rng, c)
        pairs.append(make_pair(c, lo, hi)[0])
    xs = np.stack(pairs)
    with torch.no_grad():
        ref = net(torch.from_numpy(xs)).numpy()
    got = OnnxModel(onnx_path, (1, *SPEC.shape)).run(xs)
    diff = float(np.max(np.abs(got - ref)))
    if not diff < 1e-4:
        raise SystemExit(f"torch/onnxruntime parity failed: max abs diff {diff}")
    meta = build_metadata(version, sel, summ, diff, len(xs), int(sum(p.numel() for p in net.parameters())),
                          ct_delegate, command)
    validate_metadata(meta)
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    if test_manifest is not None:
        from scanqc.models.evaluate import evaluate_model, held_out_sources, read_manifest
        from scanqc.models.registry import InstalledModel

        test = evaluate_model(InstalledModel("coverage", version, dest, "staging", meta), test_manifest, split="all")
        test["held_out"] = held_out_sources(read_manifest(test_manifest, "coverage", "all"))
        meta["metrics"]["test"] = test
    write_metadata_props(onnx_path, meta)
    meta["onnx"]["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    meta["onnx"]["bytes"] = onnx_path.stat().st_size
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(dest, onnx_path.stat().st_size, "bytes, parity", diff)
    return dest


def rethreshold(source: Path, out_root: Path, version: str, cut_fraction: dict[str, float], reason: str,
                command: str = "") -> Path:
    """``out_root/coverage/<version>``: the same brain-mask graph as ``source`` with new per-end cut fractions
    (the decision rule, not the network, changes). Each new value must lie on the validation plateau recorded
    in ``source``'s metadata (where validation accuracy is at its best); the graph is checked bit-identical."""
    import shutil

    from scanqc.models.evaluate import portable_command
    from scanqc.training.export import refresh_metadata

    meta = json.loads((source / "metadata.json").read_text())
    geo = meta["geometry"]
    plateau = (geo.get("validation") or {}).get("plateau") or {}
    for end, v in cut_fraction.items():
        if end not in ("superior", "inferior"):
            raise SystemExit(f"unknown end {end!r}: superior or inferior")
        lo, hi = plateau.get(end, (None, None))
        if lo is None or not lo <= v <= hi:
            raise SystemExit(f"{end} cut_fraction {v} is off the validation plateau {plateau.get(end)}")
    old = {k: float(v) for k, v in geo["cut_fraction"].items()}
    geo["cut_fraction"] = {**old, **{k: float(v) for k, v in cut_fraction.items()}}
    geo["rethresholded"] = {"from": f"{meta['version']} {old}", "reason": reason,
                            "command": portable_command(command, Path.cwd()),
                            "date": time.strftime("%Y-%m-%d")}
    meta["version"] = version
    meta["changelog"] = {**meta.get("changelog", {}), version: f"cut_fraction {geo['cut_fraction']} (was {old}): "
                                                               f"{reason}"}
    meta["metrics"] = {"validation": meta["metrics"]["validation"]}  # test figures belong to the old rule
    dest = out_root / "coverage" / version
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "model.onnx", dest / "model.onnx")
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    refresh_metadata(dest, Path.cwd())  # re-embeds the metadata in the ONNX, outputs checked bit-identical
    print(dest, geo["cut_fraction"])
    return dest


# ----------------------------------------------------------------------------------------------- held-out figures
def figures(manifest: Path, out: Path, candidate: Path, current: str = "2.0.0") -> dict[str, Any]:
    """Brain rows of a coverage manifest: accuracy with the right ends (95 % stratified bootstrap) per true end,
    for the candidate folder's newest coverage model and the bundled ``current``; paired difference."""
    from scanqc.evaluation.metrics import bootstrap_ci
    from scanqc.evaluation.quality import resolve_model
    from scanqc.models.evaluate import case_outputs, encode_row, paired_difference, read_manifest
    from scanqc.models.registry import BUNDLED_DIR, ModelRegistry

    rows = [r for r in read_manifest(manifest, "coverage", "all") if r.get("body_region") == "brain"]
    t = np.stack([encode_row("coverage", r) for r in rows])
    end = np.where(t[:, 0] > 0.5, "superior", np.where(t[:, 1] > 0.5, "inferior", "full"))
    models = {"candidate": resolve_model("coverage", candidate),
              "current": ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", current)}
    res: dict[str, Any] = {"manifest": str(manifest), "n": len(rows),
                           "n_by_end": {k: int((end == k).sum()) for k in ("full", "superior", "inferior")}}
    outs = {}
    for who, m in models.items():
        o = case_outputs(m, rows)
        outs[who] = (o, m.thresholds)
        flag = np.stack([[x[f"missing_{e}"] >= float(m.thresholds[f"missing_{e}"]["fail"])
                          for e in ("superior", "inferior")] for x in o])
        ok = np.all(flag == (t > 0.5), axis=1).astype(float)
        cls = np.searchsorted(["full", "inferior", "superior"], end)
        block = {"version": m.version, "accuracy": float(ok.mean()),
                 "accuracy_ci95": bootstrap_ci(lambda y, c: float(np.mean(c)), cls, ok)}
        for k in ("full", "superior", "inferior"):
            sel = end == k
            if sel.any():
                block[k] = {"n": int(sel.sum()), "accuracy": float(ok[sel].mean()),
                            "ci95": bootstrap_ci(lambda y, c: float(np.mean(c)), np.zeros(int(sel.sum())), ok[sel])}
        block["errors"] = [{"case_id": r["case_id"], "true": e, "flagged": [n for n, f in zip(("superior", "inferior"),
                            fl) if f], **({"end_fraction": x.get("end_fraction")} if "end_fraction" in x else {})}
                           for r, e, fl, x, g in zip(rows, end, flag, o, ok) if not g]
        res[who] = block
    res["difference"] = paired_difference("coverage", t, outs["candidate"][0], outs["candidate"][1],
                                          outs["current"][0], outs["current"][1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k not in ("candidate", "current")}, indent=2, default=str))
    for who in ("candidate", "current"):
        b = res[who]
        print(who, b["version"], round(b["accuracy"], 3), b["accuracy_ci95"],
              {k: (b[k]["n"], round(b[k]["accuracy"], 3), b[k]["ci95"]) for k in ("full", "superior", "inferior")
               if k in b})
    return res


def tight_heads(models: Path, n: int, seed: int, out: Path, air_mm: float = 5.0, current: str = "2.0.0"
                ) -> dict[str, Any]:
    """Issue 19's acceptance pair on ``n`` held-out heads (variant test): the whole head with only ``air_mm`` of air
    above the scalp must pass; the same head with its vertex cut (3-30 % of the brain removed) must fail superior."""
    from scanqc.datasets.coverage import crop_coverage, end_touches, random_coverage
    from scanqc.datasets.head import acquire_head
    from scanqc.evaluation.quality import resolve_model
    from scanqc.models.registry import BUNDLED_DIR, ModelRegistry

    from scanqc.preprocessing import preprocess

    models_ = {"candidate": resolve_model("coverage", models),
               "current": ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", current)}
    res: dict[str, Any] = {"n": n, "seed": seed, "variant": "test", "air_mm": air_mm}
    hits: dict[str, dict[str, list[bool]]] = {w: {"full_pass": [], "vertex_cut_fails_superior": []} for w in models_}
    for i in range(n):
        rng = np.random.default_rng([seed, i, 19])
        vol, req, _ = acquire_head(rng, "test", None, superior_air_mm=air_mm)
        cut_vol, cut_req, _ = crop_coverage(vol, req, random_coverage(rng, "superior", (3.0, 30.0), (0.03, 0.3)))
        assert end_touches(req, vol) == [] and end_touches(cut_req, cut_vol) == ["superior"]
        for who, m in models_.items():
            got = []
            for v in (vol, cut_vol):
                o = m.postprocess(m.run(preprocess(v, m.spec, "MR")[None]))[0]
                got.append([o[f"missing_{e}"] >= float(m.thresholds[f"missing_{e}"]["fail"])
                            for e in ("superior", "inferior")])
            hits[who]["full_pass"].append(not any(got[0]))
            hits[who]["vertex_cut_fails_superior"].append(got[1] == [True, False])
    for who, m in models_.items():
        res[who] = {"version": m.version, **{k: {"rate": float(np.mean(v)), "k": int(np.sum(v))}
                                             for k, v in hits[who].items()}}
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


def perf(models: Path, runs: int = 5) -> list[float]:
    """Seconds per call (perf_counter) of preprocessing + inference + geometry for a 176x256x256 MR, as the check
    runs them (onnxruntime threads: ``$SCANQC_ORT_THREADS``, default min(2, cores))."""
    from scanqc.evaluation.quality import resolve_model

    from scanqc.checks import brain_coverage as bc
    from scanqc.preprocessing import preprocess

    m = resolve_model("coverage", models)
    arr = np.random.default_rng(0).random((176, 256, 256), dtype=np.float32) * 400
    # A sagittal 3D MPRAGE (slices right -> left, rows superior -> inferior): canonicalize transposes it.
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
    vol = Volume(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction, "MR")
    geo = bc.cut_fractions(m.metadata["geometry"])
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        x = preprocess(vol, m.spec, "MR")
        lg = m.run(x[None])
        bc.measure(lg.reshape(bc.SPEC.shape) >= 0, *bc.grid_geometry(vol), geo)
        if i:  # the first call creates the onnxruntime session
            times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": [round(t, 4) for t in times], "median": round(float(np.median(times)), 4)}))
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m scanqc.training.brain_mask")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--variant", default="train")
    c.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--minutes", type=float, default=40.0)
    t.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("select")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--cache", type=Path, required=True)
    e = sub.add_parser("export")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--version", default="2.1.0")
    e.add_argument("--test-manifest", type=Path, default=None)
    f = sub.add_parser("figures")
    f.add_argument("--manifest", type=Path, required=True)
    f.add_argument("--models", type=Path, required=True, help="folder holding coverage/<candidate version>")
    f.add_argument("--out", type=Path, required=True)
    th = sub.add_parser("tight")
    th.add_argument("--models", type=Path, required=True)
    th.add_argument("--n", type=int, default=40)
    th.add_argument("--seed", type=int, default=4343)
    th.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("rethreshold", help="same network, new per-end cut fractions (on the validation plateau)")
    r.add_argument("--source", type=Path, required=True, help="an exported coverage/<version> folder")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--version", required=True)
    r.add_argument("--superior", type=float, default=None)
    r.add_argument("--inferior", type=float, default=None)
    r.add_argument("--reason", required=True)
    pf = sub.add_parser("perf")
    pf.add_argument("--models", type=Path, required=True)
    a = ap.parse_args(argv)
    # The re-runnable command line recorded in an exported model's metadata (export, rethreshold).
    command = "python -m scanqc.training.brain_mask " + shlex.join(argv if argv is not None else sys.argv[1:])
    if a.cmd == "cache":
        write_cache(a.out, a.n, a.seed, a.variant)
    elif a.cmd == "train":
        train(a.cache, a.out, a.minutes, a.seed)
    elif a.cmd == "select":
        select(a.run, a.cache)
    elif a.cmd == "tight":
        tight_heads(a.models, a.n, a.seed, a.out)
    elif a.cmd == "perf":
        perf(a.models)
    elif a.cmd == "rethreshold":
        cuts = {k: v for k, v in (("superior", a.superior), ("inferior", a.inferior)) if v is not None}
        rethreshold(a.source, a.out, a.version, cuts, a.reason, command=command)
    elif a.cmd == "figures":
        figures(a.manifest, a.out, a.models)
    else:
        export(a.run, a.out, a.version, command=command, test_manifest=a.test_manifest)

if __name__ == "__main__":
    main()
