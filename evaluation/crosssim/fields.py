"""Shared numeric helpers: smooth random fields, ellipsoids on a grid, rotations."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _interp_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """Dense linear-interpolation matrix (n_fine x n_coarse) spanning the same extent."""
    pos = np.linspace(0, n_coarse - 1, n_fine)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_coarse - 2)
    w = (pos - i0).astype(np.float32)
    m = np.zeros((n_fine, n_coarse), np.float32)
    m[np.arange(n_fine), i0] = 1 - w
    m[np.arange(n_fine), i0 + 1] = w
    return m


def upsample(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Separable trilinear up-sampling of a small 3D array to ``shape`` (three small matrix products)."""
    out = np.tensordot(_interp_matrix(shape[0], coarse.shape[0]), coarse, axes=(1, 0))
    out = np.tensordot(out, _interp_matrix(shape[1], coarse.shape[1]), axes=(1, 1)).transpose(0, 2, 1)
    return np.tensordot(out, _interp_matrix(shape[2], coarse.shape[2]), axes=(2, 1)).astype(np.float32)


def smooth_noise(shape: tuple[int, ...], spacing: float, wavelength_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``wavelength_mm`` across (white noise on a coarse
    grid of wavelength/4, smoothed, then linearly up-sampled: cheap band-limited noise)."""
    step = max(wavelength_mm / 4.0, spacing)
    factor = step / spacing
    coarse = tuple(max(int(np.ceil(n / factor)) + 1, 3) for n in shape)
    g = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0, mode="wrap")
    up = upsample(g, shape)  # type: ignore[arg-type]
    up -= up.mean()
    sd = float(up.std()) or 1.0
    return (up / sd).astype(np.float32)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z (applied z @ y @ x)."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Grid:
    """Regular grid [z, y, x] with coordinates in mm (``x0 + i*h``), for building label maps."""

    def __init__(self, lo: tuple[float, float, float], hi: tuple[float, float, float], h: float):
        self.h = h
        self.lo = np.asarray(lo, float)  # (x, y, z) mm of voxel 0
        n = np.floor((np.asarray(hi, float) - self.lo) / h).astype(int) + 1
        self.nx, self.ny, self.nz = (int(v) for v in n)
        self.shape = (self.nz, self.ny, self.nx)
        self.x = (self.lo[0] + h * np.arange(self.nx)).astype(np.float32)
        self.y = (self.lo[1] + h * np.arange(self.ny)).astype(np.float32)
        self.z = (self.lo[2] + h * np.arange(self.nz)).astype(np.float32)

    def bbox(self, c: tuple[float, float, float], r: tuple[float, float, float]) -> tuple[slice, slice, slice]:
        sl = []
        for axis, (cc, rr) in zip((self.z, self.y, self.x), ((c[2], r[2]), (c[1], r[1]), (c[0], r[0]))):
            i0 = int(np.searchsorted(axis, cc - rr))
            i1 = int(np.searchsorted(axis, cc + rr, side="right"))
            sl.append(slice(max(i0, 0), max(min(i1, len(axis)), 0)))
        return tuple(sl)  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None], self.z[sl[0]][:, None, None])


def ellipsoid(grid: Grid, c, r, perturb: np.ndarray | None = None, amp: float = 0.0) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid (centre c, semi-axes r, mm, x/y/z) on the grid, its radius
    optionally modulated by ``1 + amp * perturb`` (a full-grid noise field)."""
    out = np.zeros(grid.shape, bool)
    pad = 1.0 + 3 * abs(amp)
    sl = grid.bbox(c, tuple(v * pad for v in r))
    if any(s.stop <= s.start for s in sl):
        return out
    x, y, z = grid.coords(sl)
    q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
    if perturb is not None and amp:
        out[sl] = q < (1.0 + amp * perturb[sl]) ** 2
    else:
        out[sl] = q < 1.0
    return out


def ellipsoid_q(grid: Grid, c, r) -> np.ndarray:
    """Normalised squared radius of an ellipsoid over the whole grid (float32)."""
    x, y, z = grid.coords((slice(None), slice(None), slice(None)))
    return (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2).astype(np.float32)
