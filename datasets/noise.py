"""Acquisition noise.

- MR magnitude images: Rician noise, the magnitude of the true signal plus complex Gaussian noise
  (Gudbjartsson & Patz, MRM 1995, "The Rician distribution of noisy MRI data"); background air
  becomes Rayleigh-distributed, as in real magnitude images.
- CT: Gaussian noise low-pass filtered to mimic the correlated texture of filtered back-projection
  (noise power spectrum peaks at mid frequencies; a Gaussian kernel is a simple stand-in), scaled
  to the requested standard deviation in HU.

Noise draws need randomness by nature; the deterministic twin takes an explicit ``seed``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError


def _check_sigma(sigma: float) -> float:
    s = float(sigma)
    if not np.isfinite(s) or s < 0:
        raise ScanQCError(ErrorCode.USAGE, f"noise sigma must be a finite number >= 0, got {sigma!r}")
    return s


def apply_rician_noise(array: np.ndarray, sigma: float, seed: int | np.random.Generator) -> np.ndarray:
    """``|array + N(0, sigma) + i N(0, sigma)|``; ``sigma == 0`` returns the input unchanged."""
    array = np.asarray(array, dtype=np.float32)
    s = _check_sigma(sigma)
    if s == 0:
        return array.copy()
    rng = np.random.default_rng(seed)
    re = array + rng.normal(0, s, array.shape).astype(np.float32)
    im = rng.normal(0, s, array.shape).astype(np.float32)
    return np.hypot(re, im).astype(np.float32)


def apply_ct_noise(array: np.ndarray, sigma_hu: float, seed: int | np.random.Generator,
                   correlation_voxels: float = 0.7) -> np.ndarray:
    """Add correlated Gaussian noise with standard deviation ``sigma_hu`` (measured after filtering)."""
    array = np.asarray(array, dtype=np.float32)
    s = _check_sigma(sigma_hu)
    if s == 0:
        return array.copy()
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(array.shape, dtype=np.float32)
    if correlation_voxels > 0:
        # In-plane correlation only: CT noise is correlated within a slice by the reconstruction
        # kernel; along z it is set by the slice profile, which we treat as independent.
        n = ndimage.gaussian_filter(n, (0, correlation_voxels, correlation_voxels))
        n /= max(float(n.std()), 1e-6)
    return array + np.float32(s) * n
