"""Parameter ranges of the ``train`` and ``test`` variants (disjoint where it matters).

A held-out test set must come from other seeds *and* other base-volume transforms than training,
so a model cannot pass by memorising the base anatomy. ``test`` draws from ranges training never
sees: every MNI base is mirrored left/right and more strongly rotated, scaled and elastically
deformed; bias fields and gamma are stronger; the CT phantom's organ sizes and body habitus come
from outside the training ranges (:data:`scanqc.datasets.ct_phantom.VARIANT_RANGES`). Artefact
severities and labels use the same definitions in both.
"""

from __future__ import annotations

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError

Range = list[tuple[float, float]]

BRAIN_VARIANTS: dict[str, dict[str, Range | bool]] = {
    "train": {
        "rotation_deg": [(0.0, 8.0)], "scale": [(0.95, 1.05)], "flip_lr": False, "elastic_mm": [(0.0, 2.5)],
        "bias_strength": [(0.0, 0.25)], "log_gamma": [(-0.25, 0.25)],
    },
    "test": {
        "rotation_deg": [(8.0, 14.0)], "scale": [(0.88, 0.95), (1.05, 1.12)], "flip_lr": True,
        "elastic_mm": [(2.5, 5.0)], "bias_strength": [(0.25, 0.4)], "log_gamma": [(-0.4, -0.25), (0.25, 0.4)],
    },
}
VARIANTS = tuple(BRAIN_VARIANTS)


def check_variant(variant: str) -> str:
    if variant not in BRAIN_VARIANTS:
        raise ScanQCError(ErrorCode.USAGE, f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    return variant


def pick_range(rng: np.random.Generator, ranges: Range) -> tuple[float, float]:
    """One of the (disjoint) sub-ranges, chosen at random."""
    return ranges[int(rng.integers(len(ranges)))]
