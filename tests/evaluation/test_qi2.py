"""The classical peer reported next to the motion CNN: a QI2-style background index (Mortamet et al. 2009)."""

from __future__ import annotations

import numpy as np
from scanqc.datasets.ghosting import GhostParams, apply_ghosting
from scanqc.datasets.noise import apply_rician_noise
from scanqc.training.baseline import qi2


def _head(shape=(40, 128, 128)) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = ((zz - 20) / 18) ** 2 + ((yy - 64) / 45) ** 2 + ((xx - 64) / 38) ** 2
    return np.where(r <= 1, 1.0, 0.0).astype(np.float32)


def test_ghosts_in_the_air_raise_qi2_and_pure_noise_does_not():
    obj = _head()
    clean = apply_rician_noise(obj, 0.03, 1)
    ghosted = apply_rician_noise(apply_ghosting(obj, GhostParams(4.0, "amplitude", 0.3, 0.5, 0.6, 1)), 0.03, 1)
    q_clean, q_ghost = qi2(clean), qi2(ghosted)
    assert q_ghost > 5 * max(q_clean, 1e-6)
    # The index describes the background, not the head's brightness or the noise level alone.
    assert qi2(apply_rician_noise(obj * 3.0, 0.09, 2)) < q_ghost


def test_all_zero_background_gives_no_evidence():
    assert qi2(_head()) == 0.0
