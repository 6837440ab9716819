"""Contrast (gamma) and global intensity scale: scanner- and protocol-dependent, not artefacts.

``apply_gamma`` follows TorchIO ``RandomGamma``: intensities rescaled to [0, 1] by the robust
maximum, raised to ``gamma``, scaled back. ``apply_scale`` multiplies by a constant (MR signal has
no absolute units). Random parameters come from :func:`random_gamma` / :func:`random_scale`.
"""

from __future__ import annotations

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError


def apply_gamma(array: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma-correct a non-negative image; ``gamma == 1`` returns the input unchanged."""
    array = np.asarray(array, dtype=np.float32)
    g = float(gamma)
    if not np.isfinite(g) or g <= 0:
        raise ScanQCError(ErrorCode.USAGE, f"gamma must be a positive number, got {gamma!r}")
    if g == 1.0:
        return array.copy()
    top = float(np.percentile(array, 99.9)) or 1.0
    x = np.clip(array / top, 0, None)
    return (x**g * top).astype(np.float32)


def apply_scale(array: np.ndarray, scale: float) -> np.ndarray:
    s = float(scale)
    if not np.isfinite(s) or s <= 0:
        raise ScanQCError(ErrorCode.USAGE, f"intensity scale must be a positive number, got {scale!r}")
    return (np.asarray(array, dtype=np.float32) * np.float32(s)).astype(np.float32)


def random_gamma(rng: np.random.Generator, log_range: tuple[float, float] = (-0.3, 0.3)) -> float:
    """``exp(U(log_range))`` as TorchIO does, so contrast is raised and lowered symmetrically."""
    return float(np.exp(rng.uniform(*log_range)))


def random_scale(rng: np.random.Generator, scale_range: tuple[float, float] = (200.0, 2000.0)) -> float:
    """Log-uniform scale: vendors store MR magnitudes anywhere from hundreds to thousands."""
    lo, hi = scale_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
