"""Resolution and anisotropy: resample a volume to new voxel spacing.

Downsampling first low-pass filters with a Gaussian whose FWHM equals the new voxel size along
each axis (a slice-profile stand-in: thick slices average the anatomy they span), then
interpolates linearly, so thick-slice partial-volume blur looks like acquisition, not aliasing.
Geometry is kept: the first voxel centre moves by half the change of voxel size so the covered
extent stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def apply_resample(volume: Volume, spacing: Sequence[float], order: int = 1) -> Volume:
    """Resample to ``spacing`` (mm, z y x). Same spacing returns an unchanged copy."""
    new = np.asarray([float(s) for s in spacing])
    if new.shape != (3,) or not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise ScanQCError(ErrorCode.USAGE, f"spacing must be three positive numbers, got {spacing!r}")
    old = np.asarray(volume.spacing)
    if np.allclose(new, old):
        return volume.with_array(volume.array.copy())
    ratio = new / old
    sigma = np.where(ratio > 1, np.sqrt(np.maximum(ratio**2 - 1, 0)) * FWHM_TO_SIGMA, 0.0)
    arr = ndimage.gaussian_filter(volume.array, sigma) if np.any(sigma > 0) else volume.array
    shape = np.maximum(np.round(np.asarray(volume.shape) / ratio).astype(int), 1)
    # Sample centres so that the new grid spans the same physical extent.
    coords = [(np.arange(n) + 0.5) * r - 0.5 for n, r in zip(shape, ratio)]
    out = ndimage.map_coordinates(arr, np.meshgrid(*coords, indexing="ij"), order=order, mode="nearest")
    origin = np.asarray(volume.origin) + volume.direction @ ((ratio - 1) / 2.0 * old)
    return Volume(out.astype(np.float32), tuple(new), tuple(origin), volume.direction.copy(), volume.modality)


def resample_labels(labels: np.ndarray, old_spacing: Sequence[float], new_spacing: Sequence[float],
                    shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour twin of :func:`apply_resample` for integer label maps."""
    ratio = np.asarray(new_spacing, dtype=float) / np.asarray(old_spacing, dtype=float)
    coords = [(np.arange(n) + 0.5) * r - 0.5 for n, r in zip(shape, ratio)]
    return ndimage.map_coordinates(labels, np.meshgrid(*coords, indexing="ij"), order=0, mode="nearest")


def random_spacing(rng: np.random.Generator, base: float, inplane: tuple[float, float] = (1.0, 1.3),
                   slice_factor: tuple[float, float] = (1.0, 2.5)) -> tuple[float, float, float]:
    """In-plane ``base * U(inplane)`` and slices ``in-plane * U(slice_factor)`` (anisotropy)."""
    p = base * float(rng.uniform(*inplane))
    return (round(p * float(rng.uniform(*slice_factor)), 3), round(p, 3), round(p, 3))
