"""Train the abdominal localisation network (:mod:`scanqc.checks.abdomen_seg`) on domain-randomised label maps.

SynthSeg-style (Billot et al. 2023): every case is a fresh random label map (:func:`scanqc.datasets.abdomen.
make_labels`) rendered with every non-label parameter random (phase incl. non-contrast, enhancement scale,
slice thickness, kernel, noise, pixel size / FOV, arms in or out), spanning chest to pelvis; the training
sampler then cuts random scan extents out of it (organs cut by either end, chest-only and pelvis-only ranges)
and perturbs the HU (scale and offset, extra noise) so the network does not lean on the exact HU of a phase.
Cases are drawn *while* training (one new case every ``--steps-per-case`` steps into a replay pool): one
process, one thread, no data on disk.

The image goes through :func:`scanqc.checks.abdomen_seg.work_grid`, the function the check runs; targets
through :func:`~scanqc.checks.abdomen_seg.labels_to_grid` (same block means, resampling and crop).

    OMP_NUM_THREADS=1 python -m scanqc.training.abdomen_seg --minutes 40 --out models --version 1.0.0
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
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.checks.abdomen_seg import (
    AIR_HU,
    CLASSES_CS,
    GRID_MM,
    INPLANE,
    WINDOWS,
    labels_to_grid,
    network_input,
    work_grid,
)

PATCH_Z = 40
CHANNELS = (10, 20, 40, 80)
#: What this trainer labels (1.1.0 on): the kidney's collecting system is its own class, so the contrast-phase
#: check can read the urine's HU; the check's kidney is kidney + collecting system.
CLASSES = CLASSES_CS


def code_map() -> dict[int, int]:
    from scanqc.datasets.abdomen import LABELS as L

    groups = {"liver": ("liver", "liver_cyst", "hepatic_vein"), "spleen": ("spleen",),
              "kidney": ("kidney_cortex", "kidney_medulla"), "collecting_system": ("collecting_system",),
              "aorta": ("aorta",),
              "ivc": ("ivc",), "portal_vein": ("portal_vein",), "bone": ("bone_cortical", "bone_cancellous", "disc")}
    return {L[n]: CLASSES.index(c) for c, names in groups.items() for n in names}


def draw_case(rng: np.random.Generator, variant: str = "train") -> dict[str, Any]:
    """One rendered chest-to-pelvis CT on the working grid: ``{"image": HU [Z, 64, 64], "target": classes}``."""
    from scanqc.datasets.abdomen import PHASES, bolus_hu, make_labels, render

    from scanqc.volume import Volume

    phase = str(rng.choice(PHASES))
    enh = "suboptimal" if phase != "non_contrast" and rng.uniform() < 0.3 else "optimal"
    thickness = float(rng.choice([1.25, 2.0, 2.5, 3.0, 4.0, 5.0]))
    sz = max(thickness, 2.0)
    px = float(rng.uniform(2.4, 3.2))
    top, bottom = float(rng.uniform(40, 200)), float(rng.uniform(-470, -260))
    labels, _, info = make_labels(rng, (sz, px, px), variant, (top, bottom))
    spacing = tuple(info["spacing_mm"])
    hu, _ = bolus_hu(rng, phase, enh)
    img, _ = render(labels, hu, spacing, rng, thickness, float(rng.uniform(5, 30)), phase)
    vol = Volume(img, spacing, modality="CT")
    g = work_grid(vol)
    target = labels_to_grid(labels, vol, g, code_map())
    return {"image": g.image.astype(np.float16), "target": target, "phase": phase}


def sample(rng: np.random.Generator, case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A training patch: a random scan extent (padded with air below when short), HU perturbed, windowed."""
    img = case["image"].astype(np.float32)
    tgt = case["target"]
    z = img.shape[0]
    if rng.uniform() < 0.6:
        n = int(rng.integers(min(8, z), z + 1))
        s = int(rng.integers(0, z - n + 1))
        img, tgt = img[s:s + n], tgt[s:s + n]
    n = img.shape[0]
    if n >= PATCH_Z:
        s = int(rng.integers(0, n - PATCH_Z + 1))
        img, tgt = img[s:s + PATCH_Z], tgt[s:s + PATCH_Z]
    else:
        img = np.concatenate([img, np.full((PATCH_Z - n, INPLANE, INPLANE), AIR_HU, np.float32)])
        tgt = np.concatenate([tgt, np.zeros((PATCH_Z - n, INPLANE, INPLANE), np.uint8)])
    # Intensity: HU scale / offset (scanner calibration, kernels) and extra noise.
    img = img * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-25, 25))
    img = img + rng.normal(0, float(rng.uniform(0, 12)), img.shape).astype(np.float32)
    return network_input(img)[0], tgt.astype(np.int64)


def build_net() -> Any:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=len(WINDOWS), out_channels=len(CLASSES), channels=CHANNELS,
                strides=(2, 2, 2), num_res_units=1, norm="instance")


def load_weights(net: Any, source: Path, probe: dict[str, Any]) -> None:
    """Initialise ``net`` from a state_dict or from an exported bundle's ONNX graph (fine-tuning a shipped
    network when its checkpoint is gone). The exporter renames the PReLU slopes (``onnx::PRelu_*``, in module
    order) and keeps every other parameter's name; the result is checked against the ONNX graph on ``probe``."""
    import torch

    if source.suffix == ".pt":
        net.load_state_dict(torch.load(source, map_location="cpu"))
        return
    import onnx
    from onnx import numpy_helper

    from scanqc.inference import make_session

    path = source / "model.onnx" if source.is_dir() else source
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    prelu = [v for k, v in inits.items() if k.startswith("onnx::PRelu_")]
    sd, slopes = net.state_dict(), iter(prelu)
    new = {}
    for k, v in sd.items():
        src = inits[k] if k in inits else next(slopes, None)
        if src is None:
            raise SystemExit(f"--init {source}: the graph has no parameter for {k} (another architecture?)")
        if src.size != v.numel():
            raise SystemExit(f"--init {source}: {k} has {src.size} values, the network {v.numel()}")
        new[k] = torch.from_numpy(np.ascontiguousarray(src).reshape(tuple(v.shape)).copy())
    net.load_state_dict(new)
    x = network_input(probe["image"].astype(np.float32))
    net.eval()
    with torch.no_grad():
        diff = float(np.abs(make_session(path, 1).run(None, {"image": x})[0] - net(torch.from_numpy(x)).numpy()).max())
    net.train()
    if diff > 1e-3:
        raise SystemExit(f"--init {source}: the loaded weights do not reproduce the ONNX graph (max diff {diff})")
    print(f"initialised from {path} (parity {diff:.1e})", file=sys.stderr)


def dice_per_class(pred: np.ndarray, tgt: np.ndarray) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c, name in enumerate(CLASSES):
        if c == 0:
            continue
        a, b = pred == c, tgt == c
        s = a.sum() + b.sum()
        out[name] = None if b.sum() == 0 else float(2 * (a & b).sum() / s)
    return out


def evaluate(net: Any, cases: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    dices: dict[str, list[float]] = {c: [] for c in CLASSES[1:]}
    net.eval()
    with torch.no_grad():
        for c in cases:
            x = torch.from_numpy(network_input(c["image"].astype(np.float32)))
            p = net(x)[0, :, :c["image"].shape[0]].argmax(0).numpy()
            for k, v in dice_per_class(p, c["target"]).items():
                if v is not None:
                    dices[k].append(v)
    net.train()
    return {k: {"n": len(v), "mean_dice": round(float(np.mean(v)), 4) if v else None} for k, v in dices.items()}


def export(net: Any, folder: Path, version: str, info: dict[str, Any], metrics: dict[str, Any]) -> Path:
    import onnx
    import torch
    from scanqc.training.export import MONAI_SCHEMA, validate_metadata, write_metadata_props

    from scanqc.inference import make_session

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    net.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (1, len(WINDOWS), 48, INPLANE, INPLANE))
                         .astype(np.float32))
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {2: "z"}, "logits": {2: "z"}})
    if any(folder.glob("*.data")):
        raise SystemExit("exporter wrote external data")
    # Parity on real working-grid inputs of two lengths.
    diffs = []
    sess = make_session(path, 1)
    for c in info.pop("_parity"):
        xi = network_input(c["image"].astype(np.float32))
        with torch.no_grad():
            ref = net(torch.from_numpy(xi)).numpy()
        diffs.append(float(np.abs(sess.run(None, {"image": xi})[0] - ref).max()))
    diff = max(diffs)
    if diff > 1e-3:
        raise SystemExit(f"ONNX parity failed: {diff}")
    n_params = int(sum(p.numel() for p in net.parameters()))
    import monai

    meta = {
        "schema": MONAI_SCHEMA, "name": "scanqc_abdomen_seg", "task": "abdomen_seg", "version": version,
        "changelog": {version: "abdominal localisation network: liver, spleen, kidneys, aorta, IVC, portal vein, "
                               "bone, renal collecting system on a 6 mm grid; trained on scanqc.datasets.abdomen "
                               "label maps"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__, "required_packages_version": {"onnxruntime": ">=1.17"},
        "optional_packages_version": {"python": platform.python_version(), "onnx": onnx.__version__},
        "description": "Coarse abdominal CT segmentation for localisation (contrast phase by measured HU, "
                       "abdominal coverage by geometry)",
        "authors": "scanqc contributors", "copyright": "Apache-2.0",
        "data_source": "scanqc.datasets.abdomen make_labels/render, drawn while training (no stored data)",
        "data_type": "nifti", "image_classes": "2 channels: CT HU windows " + ", ".join(f"[{lo:g}, {hi:g}]"
                                                                                   for lo, hi in WINDOWS),
        "label_classes": ", ".join(CLASSES), "labels": list(CLASSES),
        "network": {"class": "monai.networks.nets.UNet", "channels": list(CHANNELS), "strides": [2, 2, 2],
                    "num_res_units": 1, "norm": "instance", "parameters": n_params},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                 "num_channels": len(WINDOWS), "spatial_shape": ["8*n", INPLANE, INPLANE],
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {str(i): f"CT window [{lo:g}, {hi:g}] HU"
                                                 for i, (lo, hi) in enumerate(WINDOWS)}}},
            "outputs": {"logits": {"type": "image", "format": "segmentation", "num_channels": len(CLASSES),
                                   "spatial_shape": ["8*n", INPLANE, INPLANE], "dtype": "float32",
                                   "value_range": [], "is_onehot": True,
                                   "channel_def": {str(i): n for i, n in enumerate(CLASSES)}}}},
        "preprocessing": {"mode": "mm_grid", "shape": [PATCH_Z, INPLANE, INPLANE],
                          "ct_windows": [list(w) for w in WINDOWS], "modalities": ["CT"], "antialias": True,
                          "version": 1, "orientation": "IPL", "in_channels": len(WINDOWS)},
        "working_grid": {"grid_mm": GRID_MM, "inplane": INPLANE, "z_multiple": 8, "detail_mm": 3.0,
                         "implementation": "scanqc.checks.abdomen_seg.work_grid",
                         "crop": "in-plane, centred on the body's centroid (> -500 HU), air padding"},
        "domain": {"modality": "CT", "region": "trunk (chest to pelvis)", "slice_thickness_mm": [0.6, 5.0]},
        "metrics": {"validation": metrics},
        "training": {**info, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")},
        "onnx": {"file": "model.onnx", "exporter": "torch.onnx (torchscript)", "opset": 17, "input": "image",
                 "output": "logits", "parity_max_abs_diff": diff, "parity_cases": len(diffs),
                 "parity_tolerance": 1e-3},
    }
    validate_metadata(meta)
    write_metadata_props(path, meta)
    data = path.read_bytes()
    meta["onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    import torch
    from monai.losses import DiceCELoss

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps-per-case", type=int, default=2, help="training steps per newly drawn case")
    ap.add_argument("--pool", type=int, default=400, help="replay pool size (oldest cases dropped)")
    ap.add_argument("--n-val", type=int, default=12, help="held-out cases (variant test, seed + 1000)")
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--checkpoint", type=Path, default=None, help="state_dict saved every few minutes")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights: a state_dict (.pt) or an exported bundle folder (model.onnx)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, 11])
    t0 = time.perf_counter()
    val = [draw_case(np.random.default_rng([a.seed + 1000, i]), "test") for i in range(a.n_val)]
    net = build_net()
    if a.init is not None:
        load_weights(net, a.init, val[0])
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    pool: list[dict[str, Any]] = []
    step, drawn, losses = 0, 0, []
    budget = a.minutes * 60.0
    t_train = time.perf_counter()
    last_ckpt = t_train
    while time.perf_counter() - t_train < budget:
        if step % a.steps_per_case == 0 or not pool:
            pool.append(draw_case(np.random.default_rng([a.seed, drawn])))
            drawn += 1
            if len(pool) > a.pool:
                pool.pop(0)
        frac = (time.perf_counter() - t_train) / budget
        for gp in opt.param_groups:
            gp["lr"] = a.lr * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
        xs, ys = zip(*(sample(rng, pool[int(rng.integers(len(pool)))]) for _ in range(a.batch)))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))[:, None]
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 50 == 0:
            print(f"step {step} drawn {drawn} loss {np.mean(losses[-50:]):.4f} "
                  f"t {time.perf_counter() - t_train:.0f}s", file=sys.stderr, flush=True)
        if a.checkpoint and time.perf_counter() - last_ckpt > 300:
            torch.save(net.state_dict(), a.checkpoint)
            last_ckpt = time.perf_counter()
    if a.checkpoint:
        torch.save(net.state_dict(), a.checkpoint)
    metrics = evaluate(net, val)
    print(json.dumps(metrics, indent=1), file=sys.stderr)
    from scanqc.training.export import portable_training

    args = shlex.join(argv if argv is not None else sys.argv[1:])
    info = {"command": f"OMP_NUM_THREADS=1 python -m scanqc.training.abdomen_seg {args}", "seed": a.seed,
            "initialised_from": str(a.init.name if a.init.is_dir() else a.init) if a.init else None,
            "steps": step, "cases_drawn": drawn, "batch": a.batch, "patch": [PATCH_Z, INPLANE, INPLANE],
            "loss": "DiceCE (MONAI, background excluded from Dice)", "optimizer": f"AdamW lr {a.lr} cosine",
            "final_loss": round(float(np.mean(losses[-100:])), 4), "train_seconds": round(time.perf_counter() - t0),
            "generator": "scanqc.datasets.abdomen (variant train); validation variant test, seed + 1000",
            "_parity": val[:2]}
    info = {**portable_training({k: v for k, v in info.items() if k != "_parity"}, Path.cwd()),
            "_parity": info["_parity"]}  # no machine paths in a shipped artifact
    folder = export(net, a.out / "abdomen_seg" / a.version, a.version, info, {"n": len(val), "dice": metrics})
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
