"""Tiny synthetic manifests for proving the training -> export -> registry -> check pipeline.

Not the real training data (that is ``scanqc.datasets``): a few 20^3 NIfTI volumes per task with a
signal a small network can pick up in a couple of epochs, written in the manifest contract's format.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from scanqc.io.nifti import write_nifti
from scanqc.volume import Volume

COLUMNS = ["case_id", "path", "modality", "task", "label", "severity", "phase", "enhancement", "missing",
           "body_region", "split", "provenance"]
PHASES = ["non_contrast", "arterial", "portal_venous", "delayed"]


def _ball(n: int, centre: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r).astype(np.float32)


def make_case(task: str, label: str, rng: np.random.Generator, n: int = 20) -> tuple[Volume, str]:
    c = n / 2
    if task == "motion":
        img = 100 * _ball(n, (c, c, c), n / 3) + rng.normal(0, 2, (n, n, n))
        if label != "none":  # ghost copies along the phase-encode axis
            k = 2 if label == "mild" else 5
            img = img + (0.15 * k) * np.roll(img, n // 4, axis=1) + (0.1 * k) * np.roll(img, -n // 4, axis=1)
        img = np.abs(img)  # a magnitude image, as MR is: the air reads a positive noise floor, not ~0
        # 4 mm voxels: the tiny head spans >= 80 mm, inside the trained domain (checks.ml.DEFAULT_DOMAINS)
        return Volume(img.astype(np.float32), (4.0, 4.0, 4.0), modality="MR"), "MR"
    if task == "contrast_phase":
        hu = {"non_contrast": 40, "arterial": 300, "portal_venous": 160, "delayed": 110}[label]
        img = -1000 + 1050 * _ball(n, (c, c, c), n / 2.5) + (hu - 50) * _ball(n, (c, c, c), n / 6)
        return Volume((img + rng.normal(0, 5, img.shape)).astype(np.float32), (5.0, 8.0, 8.0), modality="CT"), "CT"
    # coverage: an object whose top or bottom is cut by the first/last slice
    shift = {"full": 0.0, "superior": n / 3, "inferior": -n / 3}[label]
    img = 100 * _ball(n, (c + shift, c, c), n / 3) + rng.normal(0, 2, (n, n, n))
    # array axis 0 runs inferior -> superior (default LPS direction: z = superior): the top end is index n-1
    return Volume(img.astype(np.float32), (4.0, 4.0, 4.0), modality="MR"), "MR"


def write_manifest(root: Path, task: str, labels: list[str], per_label: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for lab in labels:
        for i in range(per_label):
            vol, mod = make_case(task, lab, rng)
            rel = f"cases/{task}_{lab}_{i}.nii.gz"
            write_nifti(vol, root / rel)
            split = "val" if i % 4 == 3 else "train"
            rows.append({"case_id": f"{task}-{lab}-{i}", "path": rel, "modality": mod, "task": task, "label": lab,
                         "severity": "", "phase": lab if task == "contrast_phase" else "",
                         "enhancement": ("suboptimal" if i % 2 else "optimal") if task == "contrast_phase" else "",
                         "missing": lab if lab in ("superior", "inferior") else "",
                         "body_region": "brain", "split": split,
                         "provenance": '{"generator": "tests/training/tinydata.py"}'})
    path = root / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


TINY_CONFIG = {"preprocessing": {"shape": [16, 16, 16]}, "channels": [4, 8], "strides": [2, 2],
               "num_res_units": 0, "batch_size": 4, "lr": 0.01, "patience": 5, "workers": 1, "dropout": 0.0}
LABELS = {"motion": ["none", "mild", "severe"], "contrast_phase": PHASES,
          "coverage": ["full", "superior", "inferior"]}


def tiny_manifests(root: Path) -> dict[str, Path]:
    return {t: write_manifest(root / t, t, labs, 8, seed=i) for i, (t, labs) in enumerate(LABELS.items())}
