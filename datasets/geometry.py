"""Geometry helpers that keep a :class:`~scanqc.volume.Volume`'s world coordinates right.

Every benign spatial variation (orientation, FOV crop/pad, resolution) changes how the anatomy is
*stored*, never where it is in the patient: the LPS position of each voxel centre is updated with
the array, so labels derived in world space (coverage ends, organ masks) stay valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanqc.volume import Volume

# Default scanqc storage: slice axis -> +S (inferior slice first), rows -> +P, columns -> +L.
CANONICAL_DIRECTION = np.eye(3)[:, ::-1].copy()


def _permutation(direction: np.ndarray) -> tuple[list[int], list[bool]] | None:
    """(array axis feeding each canonical axis, flip?) when ``direction`` is a signed permutation."""
    d = np.asarray(direction)
    if not np.allclose(np.abs(d), np.round(np.abs(d)), atol=1e-3):
        return None
    order, flips = [], []
    for world in (2, 1, 0):  # canonical axis 0 is world S (2), axis 1 is P (1), axis 2 is L (0)
        a = int(np.argmax(np.abs(d[world])))
        order.append(a)
        flips.append(bool(d[world, a] < 0))
    return (order, flips) if sorted(order) == [0, 1, 2] else None


def canonicalize(volume: Volume) -> Volume:
    """Re-store an axis-aligned volume with :data:`CANONICAL_DIRECTION` (same world anatomy).

    Oblique volumes are returned unchanged (no interpolation happens here).
    """
    perm = _permutation(volume.direction)
    if perm is None:
        return volume
    order, flips = perm
    return reorient(volume, order, flips)


def reorient(volume: Volume, order: Sequence[int], flips: Sequence[bool]) -> Volume:
    """Transpose the array to ``order`` then flip the listed new axes, updating origin/direction.

    Pure index bookkeeping (no interpolation), so ``reorient`` followed by :func:`canonicalize`
    returns the original array exactly.
    """
    order = [int(o) for o in order]
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"order must be a permutation of (0, 1, 2), got {order}")
    arr = np.transpose(volume.array, order)
    d = volume.direction[:, order].copy()
    spacing = np.asarray(volume.spacing)[order]
    origin = np.asarray(volume.origin, dtype=np.float64)
    slices = []
    for ax, flip in enumerate(flips):
        if flip:
            origin = origin + d[:, ax] * spacing[ax] * (arr.shape[ax] - 1)
            d[:, ax] = -d[:, ax]
            slices.append(slice(None, None, -1))
        else:
            slices.append(slice(None))
    arr = np.ascontiguousarray(arr[tuple(slices)])
    return Volume(arr, tuple(spacing), tuple(origin), d, volume.modality)


def reorient_array(array: np.ndarray, order: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """The array part of :func:`reorient` (for label maps that travel with a volume)."""
    arr = np.transpose(array, [int(o) for o in order])
    return np.ascontiguousarray(arr[tuple(slice(None, None, -1) if f else slice(None) for f in flips)])


def crop_pad(volume: Volume, before: Sequence[int], after: Sequence[int], fill: float = 0.0) -> Volume:
    """Pad (positive) or crop (negative) each axis by ``before``/``after`` voxels; geometry follows."""
    arr, origin = crop_pad_array(volume.array, before, after, fill), np.asarray(volume.origin, dtype=np.float64)
    origin = origin - volume.direction @ (np.asarray(before, dtype=np.float64) * np.asarray(volume.spacing))
    return Volume(arr, volume.spacing, tuple(origin), volume.direction.copy(), volume.modality)


def crop_pad_array(array: np.ndarray, before: Sequence[int], after: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Array part of :func:`crop_pad`; refuses to crop an axis away entirely."""
    sl, pads = [], []
    for ax, (b, a) in enumerate(zip(before, after)):
        b, a = int(b), int(a)
        n = array.shape[ax]
        start, stop = max(-b, 0), n - max(-a, 0)
        if stop - start < 1:
            raise ValueError(f"crop {(-b, -a)} removes all {n} voxels of axis {ax}")
        sl.append(slice(start, stop))
        pads.append((max(b, 0), max(a, 0)))
    out = array[tuple(sl)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, mode="constant", constant_values=fill)
    return np.ascontiguousarray(out)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by an integer factor on every axis (box filter = ideal partial-volume average)."""
    if factor == 1:
        return array
    n = [s - s % factor for s in array.shape]
    a = array[: n[0], : n[1], : n[2]].astype(np.float32, copy=False)
    return a.reshape(n[0] // factor, factor, n[1] // factor, factor, n[2] // factor, factor).mean(axis=(1, 3, 5))


def world_z(volume: Volume, axis: int) -> np.ndarray:
    """LPS z (superior +) of each index along ``axis`` through the volume origin."""
    return volume.origin[2] + volume.direction[2, axis] * volume.spacing[axis] * np.arange(volume.shape[axis])


def superior_axis(volume: Volume) -> tuple[int, int]:
    """(array axis closest to the body axis, +1 if increasing index goes superior else -1)."""
    ax = int(np.argmax(np.abs(volume.direction[2])))
    return ax, 1 if volume.direction[2, ax] > 0 else -1
