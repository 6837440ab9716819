"""Regions of interest and profile helpers shared by the CT and MR measurements (2D slices, [row, col])."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError


def find_object(img: np.ndarray, threshold: float, *, min_area_px: int = 50) -> tuple[float, float, float]:
    """(centre row, centre column, equivalent radius) in pixels of the largest object above ``threshold``.

    Holes (air inserts, dark plates) are filled first, so the radius is that of the outer boundary.
    """
    mask = ndimage.binary_fill_holes(img > threshold)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ScanQCError(ErrorCode.USAGE, f"no phantom found in the slice (nothing above {threshold:g})")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    k = int(np.argmax(sizes)) + 1
    if sizes[k - 1] < min_area_px:
        raise ScanQCError(ErrorCode.USAGE, f"no phantom found in the slice (largest object {int(sizes[k - 1])} px)")
    cy, cx = ndimage.center_of_mass(labels == k)
    return float(cy), float(cx), float(np.sqrt(sizes[k - 1] / np.pi))


def disc_mask(shape: tuple[int, int], cy: float, cx: float, r_px: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r_px**2


def ellipse_mask(shape: tuple[int, int], cy: float, cx: float, ry_px: float, rx_px: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry_px) ** 2 + ((xx - cx) / rx_px) ** 2 <= 1.0


def stats(img: np.ndarray, mask: np.ndarray, what: str = "ROI") -> tuple[float, float]:
    """(mean, sample SD) inside ``mask``; a coded error when the ROI falls outside the image."""
    v = img[mask]
    if v.size < 4:
        raise ScanQCError(ErrorCode.USAGE, f"{what} has {v.size} pixels inside the image; is the phantom centred?")
    return float(v.mean()), float(v.std(ddof=1))


def roi_dict(slice_index: int, cy: float, cx: float, radius_mm: float, **extra: object) -> dict[str, object]:
    return {"shape": "circle", "slice": int(slice_index), "center_px": [round(cy, 2), round(cx, 2)],
            "radius_mm": round(radius_mm, 2), **extra}


def _crossing(p: np.ndarray, i: int, j: int, level: float) -> float:
    """Sub-sample position between samples i and j where the profile crosses ``level`` (linear)."""
    a, b = float(p[i]), float(p[j])
    return i + (j - i) * ((level - a) / (b - a) if b != a else 0.5)


def fwhm(profile: np.ndarray, step_mm: float, baseline: float | None = None) -> float:
    """Full width at half maximum (mm) of the peak of ``profile`` above ``baseline`` (median by default)."""
    p = np.asarray(profile, dtype=np.float64)
    base = float(np.median(p)) if baseline is None else float(baseline)
    k = int(np.argmax(p))
    half = base + (p[k] - base) / 2.0
    if p[k] - base <= 0:
        return 0.0
    lo = k
    while lo > 0 and p[lo - 1] >= half:
        lo -= 1
    hi = k
    while hi < len(p) - 1 and p[hi + 1] >= half:
        hi += 1
    left = _crossing(p, lo - 1, lo, half) if lo > 0 else 0.0
    right = _crossing(p, hi, hi + 1, half) if hi < len(p) - 1 else float(len(p) - 1)
    return float((right - left) * step_mm)


def sample_line(img: np.ndarray, cy: float, cx: float, angle_rad: float, half_len_px: float,
                step_px: float = 0.25) -> np.ndarray:
    """Bilinear samples along a line through (cy, cx) at ``angle_rad`` (0 = along columns), ``step_px`` apart."""
    t = np.arange(-half_len_px, half_len_px + step_px / 2, step_px)
    ys, xs = cy + t * np.sin(angle_rad), cx + t * np.cos(angle_rad)
    return ndimage.map_coordinates(img.astype(np.float64), [ys, xs], order=1, mode="nearest")


def edge_to_edge(profile: np.ndarray, step_mm: float, inside: float, outside: float) -> float:
    """Length (mm) between the outermost half-level crossings of an object profile (a diameter)."""
    p = np.asarray(profile, dtype=np.float64)
    half = (inside + outside) / 2.0
    above = np.nonzero(p >= half)[0] if inside > outside else np.nonzero(p <= half)[0]
    if above.size == 0:
        return 0.0
    lo, hi = int(above[0]), int(above[-1])
    left = _crossing(p, lo - 1, lo, half) if lo > 0 else 0.0
    right = _crossing(p, hi, hi + 1, half) if hi < len(p) - 1 else float(len(p) - 1)
    return float((right - left) * step_mm)
