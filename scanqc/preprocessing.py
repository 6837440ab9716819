"""The one preprocessing implementation: :class:`~scanqc.volume.Volume` -> fixed-size model input.

Training (``scanqc.training``, through a MONAI ``Dataset``) and serving (``scanqc.inference``) both
call :func:`preprocess` with the :class:`PreprocessSpec` stored in the model's ``metadata.json``, so a
model always sees at serving time exactly what it saw during training. numpy/scipy only: this module
is on the check path and must not import torch or MONAI.

Steps, in order:

1. **Orientation** (:func:`canonicalize`): transpose/flip the array, using the direction cosines, so
   axis 0 runs superior -> inferior, axis 1 anterior -> posterior, axis 2 patient right -> left
   (ITK "to" code ``IPL``; an axial series displayed radiologically, top slice first). Oblique
   series snap to the nearest axis; no resampling happens here.
2. **Resampling** (:func:`resample_fit`): the *whole scanned extent* is mapped onto a fixed grid
   (``mode="fit"``), with optional Gaussian anti-aliasing before down-sampling (sigma from the zoom
   factor, as in scikit-image ``rescale(anti_aliasing=True)``). With ``pad_slices > 0`` the
   superior-inferior axis is first fitted into ``shape[0] - 2 * pad_slices`` slices and padded at both
   ends; a mask channel (1 inside the scan, 0 in the padding) then marks where the acquisition ended, so a
   coverage model can see anatomy that touches the first or last slice.
3. **Intensity**: MR -> robust percentile normalisation (Nyúl & Udupa 1999 style landmarks, as in
   MRIQC/TorchIO ``RescaleIntensity(percentiles=...)``); CT -> one channel per HU window
   ``(x - lo) / (hi - lo)`` clipped to [0, 1] (standard display windowing; e.g. soft tissue W400/L40).
4. **Background channel** (``background_channel``, motion): motion spreads signal out of the head along
   the phase-encode direction (ghosts, ringing; MRIQC's "artefacts in air", Mortamet et al. 2009). The
   percentile-normalised intensity channel shows this as a change of ~1-3 % of the range on top of a
   noise floor that itself varies 4x between scans, so the network could not see it. This channel is
   the resampled (block-averaged, so mean signal survives) intensity divided by the noise floor
   (median of the far background), minus 1, clipped to ``[-1, background_clip]``, and set to 0 inside
   the head (Otsu mask, dilated by ``background_margin`` grid voxels). A clean scan reads ~0 everywhere;
   ghosting reads > 0 next to the head. Computed on the output grid: ~ms, numpy/scipy only. Air that the
   reconstruction zero-filled has no noise floor: with ``background_zeroed_neutral`` it reads 0 (motion 2.1.0).
5. **Peak channels** (``ct_max_windows``, optional): averaging onto a coarse grid dilutes bright
   structures smaller than a grid voxel (a 300 HU blob a few mm across reads ~100 HU, like portal-venous
   parenchyma; the phantoms' collecting systems, 1-2 cm, survive the 48^3 grid within ~25 HU, see
   docs/models.md). These channels down-sample by block maximum instead (:func:`resample_max`, as max
   pooling does inside a CNN), then window like step 3, so a small enhancing structure keeps its HU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from scanqc.cache import cached
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

#: Canonical orientation code (axis 0, 1, 2 point towards Inferior, Posterior, Left).
CANONICAL_ORIENTATION = "IPL"
# For canonical axis c: the LPS component it follows and the sign of that component (LPS: x=L, y=P, z=S).
_CANON = ((2, -1.0), (1, 1.0), (0, 1.0))


#: ``fit``: the whole scanned extent resampled onto ``shape`` (the CNNs); ``abdomen_hu``: no image at all, the
#: HU measured at located abdominal structures (:mod:`scanqc.checks.abdomen_anatomy`) for a classifier over them;
#: ``mm_grid``: a fixed-mm working grid cropped around the body (the abdominal segmentation network,
#: :func:`scanqc.checks.abdomen_seg.work_grid`; ``shape`` is its training patch, serving is fully convolutional).
MODES = ("fit", "abdomen_hu", "mm_grid")


@dataclass
class PreprocessSpec:
    """Everything :func:`preprocess` needs; serialised verbatim into ``metadata.json``."""

    shape: tuple[int, int, int] = (64, 64, 64)  # output grid (superior-inferior, anterior-posterior, left-right)
    mode: str = "fit"  # whole scanned extent -> grid
    pad_slices: int = 0  # padding slices at each superior/inferior end (adds a mask channel when > 0)
    antialias: bool = True
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    mr_clip: tuple[float, float] = (-0.5, 2.0)
    ct_windows: list[tuple[float, float]] = field(default_factory=lambda: [(-160.0, 240.0)])  # HU [lo, hi]
    ct_max_windows: list[tuple[float, float]] = field(default_factory=list)  # block-max channels (step 5)
    modalities: tuple[str, ...] = ("MR", "CT")
    version: int = 1
    background_channel: bool = False  # add the noise-floor-normalised background channel (step 4)
    background_margin: int = 2  # voxels (decimated native grid) the head mask grows by: keeps edge blur out
    background_far: int = 8  # noise floor: background at least this far (grid voxels) from the head
    background_clip: float = 4.0
    # Air zero-filled by the reconstruction (vendor background masking, exports that blank the air): with no
    # noise left to measure against, the channel reads 0 (nothing to see) instead of -1 everywhere, which
    # motion 2.0.0 (trained without this) read as motion. Off for models exported before the field existed.
    background_zeroed_neutral: bool = False
    # abdomen_hu: the abdomen_seg network version the HU features were measured with when the classifier was fit
    # ("" = the installed default; models exported before the field were all fit on 1.0.0's measurements).
    localisation: str = ""
    # abdomen_hu: the names of the measured features the classifier takes, in order (scanqc.checks.
    # abdomen_anatomy.FEATURES); empty: the first shape[2] of them (models exported before the field).
    features: tuple[str, ...] = ()

    @property
    def localisation_network(self) -> str:
        """The abdomen_seg version an ``abdomen_hu`` model's features come from."""
        return self.localisation or "1.0.0"

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.mr_percentiles = tuple(float(p) for p in self.mr_percentiles)  # type: ignore[assignment]
        self.mr_clip = tuple(float(p) for p in self.mr_clip)  # type: ignore[assignment]
        self.ct_windows = [(float(lo), float(hi)) for lo, hi in self.ct_windows]
        self.ct_max_windows = [(float(lo), float(hi)) for lo, hi in self.ct_max_windows]
        self.modalities = tuple(m.upper() for m in self.modalities)
        self.background_channel = bool(self.background_channel)
        self.background_margin, self.background_far = int(self.background_margin), int(self.background_far)
        self.background_clip = float(self.background_clip)
        self.background_zeroed_neutral = bool(self.background_zeroed_neutral)
        if self.background_margin < 0 or self.background_far < 0 or self.background_clip <= 0:
            raise ScanQCError(ErrorCode.BAD_MODEL, "background_margin/background_far must be >= 0 and "
                                                   f"background_clip > 0, got {self.background_margin}, "
                                                   f"{self.background_far}, {self.background_clip}")
        if self.mode not in MODES:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing mode {self.mode!r} unknown (expected one of "
                                                   f"{list(MODES)})")
        self.localisation = str(self.localisation)
        self.features = tuple(str(f) for f in self.features)
        if self.mode == "abdomen_hu":
            # Measured HU features (scanqc.checks.abdomen_anatomy.FEATURES) as a [1, 1, 1, F] "volume".
            if len(self.shape) != 3 or self.shape[:2] != (1, 1) or self.shape[2] < 1:
                raise ScanQCError(ErrorCode.BAD_MODEL, f"abdomen_hu preprocessing shape must be [1, 1, F], "
                                                       f"got {self.shape}")
            if self.features and len(self.features) != self.shape[2]:
                raise ScanQCError(ErrorCode.BAD_MODEL, f"abdomen_hu preprocessing names {len(self.features)} "
                                                       f"features for a shape of {self.shape[2]}")
            return
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing shape must be 3 sizes >= 4, got {self.shape}")
        if not 0 <= self.pad_slices < self.shape[0] // 2 - 1:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"pad_slices {self.pad_slices} does not fit shape {self.shape}")
        if any(hi <= lo for lo, hi in self.ct_windows) or not self.ct_windows:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"CT windows must be [lo, hi] with lo < hi, got {self.ct_windows}")
        if any(hi <= lo for lo, hi in self.ct_max_windows):
            raise ScanQCError(ErrorCode.BAD_MODEL,
                              f"CT max windows must be [lo, hi] with lo < hi, got {self.ct_max_windows}")

    def channels(self, modality: str) -> int:
        """Number of input channels for a modality (intensity channels + optional mask)."""
        if self.mode == "abdomen_hu":
            return 1
        n = len(self.ct_windows) + len(self.ct_max_windows) if modality.upper() == "CT" else 1
        return n + (1 if self.pad_slices else 0) + (1 if self.background_channel else 0)

    @property
    def in_channels(self) -> int:
        """Channels the network takes (max over modalities; MR is zero-padded to CT's count)."""
        return max(self.channels(m) for m in self.modalities)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["ct_windows"] = [list(w) for w in self.ct_windows]
        d["ct_max_windows"] = [list(w) for w in self.ct_max_windows]
        d["orientation"] = CANONICAL_ORIENTATION
        d["in_channels"] = self.in_channels
        return d

    def channel_names(self) -> list[str]:
        """One name per input channel, in :func:`preprocess` order (``len == in_channels``).

        Intensity channels (CT windows, then CT block-max windows; MR's single channel shares the first
        slot and the others read 0 for MR), then the background channel, then the inside-scan mask.
        """
        if self.mode == "abdomen_hu":  # one channel; the measured features lie along the last axis
            return ["HU measured at the located structures (scanqc.checks.abdomen_anatomy.FEATURES)"]
        names: list[str] = []
        if "CT" in self.modalities:
            names = [f"CT window [{lo:g}, {hi:g}] HU" for lo, hi in self.ct_windows]
            names += [f"CT block-max window [{lo:g}, {hi:g}] HU" for lo, hi in self.ct_max_windows]
            if "MR" in self.modalities:
                names = [names[0] + " | MR percentile-normalised"] + [n + " | 0 for MR" for n in names[1:]]
        else:
            names = ["MR percentile-normalised"]
        if self.background_channel:
            names.append("background signal / noise floor - 1 (0 in the head)")
        if self.pad_slices:
            names.append("inside-scan mask")
        return names

    #: Keys :meth:`to_dict` adds that are derived from the fields: accepted by :meth:`from_dict` when they agree.
    DERIVED_KEYS = ("orientation", "in_channels")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`. An unknown key is an error, not ignored: a typo such as
        ``backgroud_channel`` would otherwise leave the default in force without a word."""
        if not isinstance(d, dict):
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__) - set(cls.DERIVED_KEYS))
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
                k, list(cls.__dataclass_fields__), n=1)) else repr(k) for k in unknown]
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing: unknown key(s) {', '.join(hints)}; known: "
                                                   f"{', '.join(cls.__dataclass_fields__)}")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            spec = cls(**known)
        except (TypeError, ValueError) as exc:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"bad preprocessing parameters {d!r}: {exc}") from None
        if "orientation" in d and d["orientation"] != CANONICAL_ORIENTATION:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing orientation {d['orientation']!r} is not "
                                                   f"{CANONICAL_ORIENTATION!r}, the one preprocess() produces")
        if "in_channels" in d and d["in_channels"] != spec.in_channels:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"preprocessing in_channels {d['in_channels']!r} disagrees "
                                                   f"with the fields, which give {spec.in_channels}")
        return spec


#: Defaults per task (the shipped models' metadata is the authority at serving time).
DEFAULT_SPECS: dict[str, PreprocessSpec] = {
    # Motion: ghosting/blurring needs in-plane detail -> 64^3 of the whole head.
    # The background channel carries the ghost signal that intensity normalisation hides (step 4).
    "motion": PreprocessSpec(shape=(64, 64, 64), modalities=("MR",), background_channel=True,
                             background_zeroed_neutral=True),
    # Contrast phase: vessel / parenchyma / collecting-system HU; two windows separate 100-200 HU (portal
    # venous, delayed) from >250 HU (arterial aorta, excretory collecting system).
    # (A block-max channel, step 5, reached the same validation accuracy but generalised worse to noisier
    # held-out scans: docs/models.md. Available through ``ct_max_windows`` in a training config.)
    "contrast_phase": PreprocessSpec(shape=(48, 48, 48), ct_windows=[(-100.0, 300.0), (0.0, 600.0)],
                                     modalities=("CT",)),
    # Coverage: whole extent fitted into 40 of 48 slices + 4 padding slices per end and a mask channel.
    "coverage": PreprocessSpec(shape=(48, 48, 48), pad_slices=4, ct_windows=[(-200.0, 300.0)],
                               modalities=("MR", "CT")),
}


def canonicalize(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array view in the canonical ``IPL`` axis order and its spacing (mm) along those axes.

    Raises ``ScanQCError(BAD_MODEL)``-free: an ambiguous (e.g. 45° oblique) direction matrix keeps the
    stored axis order, since there is no nearest canonical axis to snap to.
    """
    arr = volume.array
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    axes = canonical_axes(volume.direction)
    if axes is None:
        return arr, tuple(spacing.tolist())  # type: ignore[return-value]
    perm, flips = axes
    arr = np.transpose(arr, perm)
    if flips:
        arr = np.flip(arr, axis=flips)
    return arr, tuple(spacing[list(perm)].tolist())  # type: ignore[return-value]


def canonical_axes(direction: Any) -> tuple[tuple[int, int, int], tuple[int, ...]] | None:
    """(array axis per canonical axis, canonical axes to flip) for a direction matrix; None when ambiguous."""
    d = np.asarray(direction, dtype=np.float64)
    dominant = np.argmax(np.abs(d), axis=0)  # LPS component each array axis mostly follows
    if sorted(dominant.tolist()) != [0, 1, 2]:
        return None
    perm = tuple(int(np.where(dominant == comp)[0][0]) for comp, _ in _CANON)
    flips = tuple(i for i, (comp, sign) in enumerate(_CANON) if np.sign(d[comp, perm[i]]) != sign)
    return perm, flips  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _axis_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) matrix of the 1D anti-aliasing blur + linear zoom along one axis.

    Gaussian blur and linear interpolation are both separable, so the 3D operation is three small
    matrix products. Building each matrix by running the same ``ndimage`` calls on an identity keeps
    the result equal to the 3D filters (to float rounding) at a fraction of the cost: a 200x512x512
    CT went from ~5 s (3D gaussian_filter + zoom over 52 M voxels) to ~0.4 s.
    """
    f = n_out / n_in
    eye = np.eye(n_in, dtype=np.float64)
    if antialias and f < 1.0:
        eye = ndimage.gaussian_filter1d(eye, sigma=(1.0 / f - 1.0) / 2.0, axis=0, mode="nearest", truncate=3.0)
    m = ndimage.zoom(eye, (f, 1.0), order=1, mode="nearest", grid_mode=True, prefilter=False)
    if m.shape[0] != n_out:  # zoom rounds the output length: crop or repeat the last row
        m = m[:n_out] if m.shape[0] > n_out else np.concatenate([m, np.repeat(m[-1:], n_out - m.shape[0], 0)])
    return m.astype(np.float32)


def inplane_key(arr: np.ndarray, shape_yx: tuple[int, int], antialias: bool = True) -> tuple:
    """The series-cache key of :func:`resample_fit`'s in-plane pass of this (canonical view of an) array."""
    return ("resample_fit.inplane", arr.shape, arr.strides, arr.__array_interface__["data"][0],
            (int(shape_yx[0]), int(shape_yx[1])), bool(antialias))


def slice_inplane(slice2d: np.ndarray, shape_yx: tuple[int, int], flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """:func:`resample_fit`'s in-plane pass (anti-aliased) of one stored slice of an axial stack.

    The DICOM receiver runs it as each slice arrives (``scanqc.ingest``), so that after the last instance only
    the pass along the slices remains. ``flip_rows`` / ``flip_cols``: the canonical view flips that axis. Same
    sums as the whole-volume pass: ``my @ slice @ mx.T`` with a flipped axis' matrix columns reversed.
    """
    my, mx_t = _slice_matrices(int(slice2d.shape[0]), int(slice2d.shape[1]), int(shape_yx[0]), int(shape_yx[1]),
                               bool(flip_rows), bool(flip_cols))
    return my @ (np.asarray(slice2d, np.float32) @ mx_t)  # columns first: the smaller intermediate


def stack_inplane(stack: np.ndarray, shape_yx: tuple[int, int], flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """:func:`slice_inplane` of each slice of ``stack`` (``[n, rows, cols]``), in two stacked matrix products."""
    my, mx_t = _slice_matrices(int(stack.shape[1]), int(stack.shape[2]), int(shape_yx[0]), int(shape_yx[1]),
                               bool(flip_rows), bool(flip_cols))
    return np.matmul(my, np.matmul(np.asarray(stack, np.float32), mx_t))


@functools.lru_cache(maxsize=64)
def _slice_matrices(rows: int, cols: int, ny: int, nx: int, flip_rows: bool,
                    flip_cols: bool) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous (row matrix, transposed column matrix) of :func:`slice_inplane`: strided views made BLAS copy."""
    my, mx = _axis_matrix(rows, ny, True), _axis_matrix(cols, nx, True)
    my = my[:, ::-1] if flip_rows else my
    mx = mx[:, ::-1] if flip_cols else mx
    return np.ascontiguousarray(my), np.ascontiguousarray(mx.T)


@dataclass(frozen=True)
class BlockMeans:
    """An in-plane pass of means over blocks of whole pixels about ``mm`` wide (the abdominal localisation's
    detail grid, :mod:`scanqc.checks.abdomen_seg`), made slice by slice on arrival like :func:`slice_inplane`."""

    mm: float

    def factors(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
        """Pixels per block along each axis given (at least one, at most the axis' length)."""
        return tuple(max(1, min(int(self.mm // max(float(s), 1e-3)), int(n))) for n, s in zip(shape, spacing))


#: One in-plane pass made per slice as instances arrive: a ``resample_fit`` grid ``(rows, cols)`` or block means.
InplanePass = tuple[int, int] | BlockMeans


def block_mean(arr: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """Means over blocks of ``ks`` elements along each axis, in axis order; a last, partial block is the mean of
    the elements it has. No padding copy (a 512-pixel row does not divide by 3) and no concatenation: the whole
    blocks and the remainder are written into one output; on one 512^2 slice ~0.4 ms."""
    out = np.asarray(arr, np.float32)
    for ax, k in enumerate(ks):
        n = out.shape[ax]
        m = n // k
        if k < 2 or m == 0:
            continue
        rest = n > m * k
        shape = list(out.shape)
        shape[ax] = m + rest
        acc = np.empty(shape, np.float32)
        whole = acc[_along(out.ndim, ax, 0, m, None)]
        np.add(out[_along(out.ndim, ax, 0, m * k, k)], out[_along(out.ndim, ax, 1, m * k, k)], out=whole)
        for i in range(2, k):
            whole += out[_along(out.ndim, ax, i, m * k, k)]
        whole *= np.float32(1.0 / k)
        if rest:  # the remainder block
            np.mean(out[_along(out.ndim, ax, m * k, None, None)], axis=ax, keepdims=True,
                    out=acc[_along(out.ndim, ax, m, None, None)])
        out = acc
    return out


def _along(ndim: int, ax: int, start: int, stop: int | None, step: int | None) -> tuple[slice, ...]:
    return tuple(slice(start, stop, step) if a == ax else slice(None) for a in range(ndim))


def block_means_key(arr: np.ndarray, factors: tuple[int, ...]) -> tuple:
    """The series-cache key of the stacked per-slice :class:`BlockMeans` pass of this canonical view."""
    return ("block_means.inplane", arr.shape, arr.strides, arr.__array_interface__["data"][0],
            (int(factors[0]), int(factors[1])))


def block_means_inplane(arr: np.ndarray, factors: tuple[int, ...], cache: dict[Any, Any] | None = None
                        ) -> np.ndarray:
    """Each slice of a canonical view block-averaged in-plane, slice by slice (the receiver's per-slice pass,
    found in ``cache``, is the same arithmetic; slice-sized passes also stay in the CPU cache: ~2.5x faster than
    one pass over a 200 MB volume)."""
    def run() -> np.ndarray:
        first = block_mean(arr[0], factors)
        out = np.empty((arr.shape[0], *first.shape), np.float32)
        out[0] = first
        for z in range(1, arr.shape[0]):
            out[z] = block_mean(arr[z], factors)
        return out

    return cached(cache, block_means_key(arr, factors), run)


def slice_pass(p: InplanePass, slice2d: np.ndarray, flip_rows: bool, flip_cols: bool,
               pixel_spacing: Sequence[float] | None) -> np.ndarray | None:
    """One stored axial slice through an in-plane pass, in the canonical view's in-plane orientation (None: the
    pass needs a pixel spacing the slice lacks)."""
    if isinstance(p, BlockMeans):
        if pixel_spacing is None:
            return None
        view = slice2d[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
        return block_mean(view, p.factors(view.shape, tuple(pixel_spacing)))
    return slice_inplane(slice2d, p, flip_rows, flip_cols)


def resample_inplane(arr: np.ndarray, shape_yx: tuple[int, int], antialias: bool = True) -> np.ndarray:
    """The in-plane pass of :func:`resample_fit`: axes 1 and 2 onto ``shape_yx``, axis 0 untouched.

    A flipped axis (canonicalize's views) would make tensordot copy the whole array first (200 MB for a CT):
    the flip is undone on the view and that axis' matrix columns reversed instead, the same weighted sums.
    """
    arr = np.asarray(arr, dtype=np.float32)
    my, mx = (_axis_matrix(int(a), int(b), antialias) for a, b in zip(arr.shape[1:], shape_yx))
    flip0 = arr.strides[0] < 0
    if flip0:
        arr = arr[::-1]
    if arr.strides[1] < 0:
        arr, my = arr[:, ::-1], my[:, ::-1]
    if arr.strides[2] < 0:
        arr, mx = arr[:, :, ::-1], mx[:, ::-1]
    out = np.tensordot(arr, mx, axes=([2], [1]))  # (z, y, X): contract the largest axis first
    out = np.einsum("zyx,Yy->zYx", out, my, optimize=True)
    return out[::-1] if flip0 else out


def resample_slices(arr: np.ndarray, n: int, antialias: bool = True) -> np.ndarray:
    """The superior-inferior pass of :func:`resample_fit`: axis 0 onto ``n`` samples. Training crops the slab
    of a stored in-plane pass and runs this, which is the same arithmetic as ``resample_fit`` on the crop."""
    mz = _axis_matrix(int(arr.shape[0]), int(n), antialias)
    if arr.strides[0] < 0:
        arr, mz = arr[::-1], mz[:, ::-1]
    return np.ascontiguousarray(np.einsum("zyx,Zz->Zyx", arr, mz, optimize=True), dtype=np.float32)


def resample_fit(arr: np.ndarray, shape: tuple[int, int, int], antialias: bool = True,
                 cache: dict[Any, Any] | None = None) -> np.ndarray:
    """Map the whole array extent onto ``shape`` (trilinear, pixel-edge aligned, anti-aliased when shrinking).

    ``cache`` (one series' scratch dict) keeps the in-plane pass, the expensive one on a 512x512 CT, so
    models with the same in-plane grid (contrast phase and coverage) share it.
    """
    arr = np.asarray(arr, dtype=np.float32)
    if tuple(arr.shape) == tuple(shape):
        return np.ascontiguousarray(arr)
    key = inplane_key(arr, (int(shape[1]), int(shape[2])), antialias)
    out = cached(cache, key, lambda: resample_inplane(arr, (int(shape[1]), int(shape[2])), antialias))
    return resample_slices(out, int(shape[0]), antialias)


def _block_reduce(arr: np.ndarray, ax: int, k: int, op: str) -> np.ndarray:
    """Mean or max over consecutive blocks of ``k`` along ``ax``; the last, partial block as if edge-padded.

    Combines ``k`` strided views element-wise: much faster than a reduction over a short reshaped axis
    when ``ax`` is the contiguous one. The partial block is computed on its own rather than padding (and so
    copying) the whole array: edge padding repeats the last element, so its mean is
    ``(sum + (k - r) * last) / k`` and its max the max of the ``r`` elements.
    """
    n = arr.shape[ax]
    m, r = divmod(n, k)

    def part(sl: slice) -> np.ndarray:
        view = [slice(None)] * arr.ndim
        view[ax] = sl
        return arr[tuple(view)]

    blocks: list[np.ndarray] = []
    if m:
        out = np.array(part(slice(0, m * k, k)), dtype=np.float32)
        for i in range(1, k):
            (np.add if op == "mean" else np.maximum)(out, part(slice(i, m * k, k)), out=out)
        blocks.append(out / k if op == "mean" else out)
    if r:
        rest = part(slice(m * k, n)).astype(np.float32)
        if op == "mean":
            last = part(slice(n - 1, n)).astype(np.float32)
            blocks.append((rest.sum(axis=ax, keepdims=True) + (k - r) * last) / k)
        else:
            blocks.append(rest.max(axis=ax, keepdims=True))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=ax)


def resample_max(arr: np.ndarray, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 detail_mm: float = 3.0) -> np.ndarray:
    """Map the whole extent onto ``shape`` keeping local maxima (module step 5).

    Per axis: block *means* first, down to about ``detail_mm`` voxels (so the result does not depend on
    the acquisition's pixel size or its noise: the maximum of a block of 0.7 mm voxels would mostly
    measure noise), then block *maxima* of ``k = round(n / n_out)`` voxels, then the remaining small zoom
    linearly without anti-aliasing (which would average the peaks away again). Edge padding of the last
    block stretches an axis by less than one output voxel. Reshape-based: ~tens of ms on a 512^2 CT.
    """
    out = np.asarray(arr, dtype=np.float32)
    k_mean = [min(int(detail_mm // max(float(sp), 1e-3)), out.shape[ax] // int(n))
              for ax, (n, sp) in enumerate(zip(shape, spacing, strict=True))]
    for ax in sorted(range(3), key=lambda a: -k_mean[a]):  # biggest reduction first: less data after
        if k_mean[ax] >= 2:
            out = _block_reduce(out, ax, k_mean[ax], "mean")
    for ax, n in enumerate(shape):
        k_max = round(out.shape[ax] / int(n))
        if k_max >= 2:
            out = _block_reduce(out, ax, k_max, "max")
    return resample_fit(np.ascontiguousarray(out), shape, antialias=False)


def normalize_mr(arr: np.ndarray, percentiles: tuple[float, float], clip: tuple[float, float]) -> np.ndarray:
    """Robust min-max: the given percentiles map to 0 and 1, then clip."""
    lo, hi = np.percentile(arr, percentiles)
    scale = float(hi - lo) if hi > lo else 1.0
    return np.clip((arr - lo) / scale, clip[0], clip[1]).astype(np.float32)


def window_ct(arr: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    """One channel per HU window, each scaled to [0, 1]."""
    return np.stack([np.clip((arr - lo) / (hi - lo), 0.0, 1.0) for lo, hi in windows]).astype(np.float32)


def otsu_threshold(x: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of the values in ``x`` (histogram between-class variance maximum)."""
    hist, edges = np.histogram(x, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    c0 = np.cumsum(hist * centers)
    m0 = c0 / np.maximum(w0, 1)
    m1 = (c0[-1] - c0) / np.maximum(w1, 1)
    return float(centers[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def _resample_axes(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """:func:`resample_fit` (anti-aliased) that skips axes already at the target size (identity: same result)."""
    out = np.asarray(arr, dtype=np.float32)
    for ax, n in enumerate(shape):
        if out.shape[ax] != n:
            m = _axis_matrix(int(out.shape[ax]), int(n), True)
            out = np.moveaxis(np.tensordot(out, m, axes=([ax], [1])), -1, ax)
    return np.ascontiguousarray(out, dtype=np.float32)


#: The far background's median below this fraction of the head's 99.5th percentile: no noise floor to read
#: (Rician air noise of a real acquisition sits at 1-8 % of the brightest tissue; zeroed air at 0).
ZEROED_AIR = 1e-3


def background_map(arr: np.ndarray, shape: tuple[int, int, int], margin: int = 2, far: int = 8,
                   clip: float = 4.0, zeroed_neutral: bool = False) -> np.ndarray:
    """Background signal relative to the noise floor on the output grid, 0 in the head; module step 4.

    Works on the array decimated to at most ~1-2x the grid (integer steps; a 176x256x256 MR becomes
    88x64x64), so the cost does not grow with the matrix. The head mask is taken there (half the Otsu
    threshold, then grown by ``margin`` voxels so partial-volume and interpolation blur at the head edge
    do not count as background), and the background is averaged over background voxels only. Air that the
    reconstruction zero-filled (far median below :data:`ZEROED_AIR` of the head) reads 0 with
    ``zeroed_neutral`` (the ghost signal is gone; the model judges the head alone), else -1 as before.
    """
    arr = np.asarray(arr, dtype=np.float32)
    step = tuple(max(1, int(n) // int(s)) for n, s in zip(arr.shape, shape))
    sub = np.ascontiguousarray(arr[::step[0], ::step[1], ::step[2]])
    hi = float(np.percentile(sub, 99.5))
    thr = 0.5 * otsu_threshold(np.clip(sub, None, hi))
    bgw = sub <= thr
    if margin > 0:
        bgw = ndimage.minimum_filter(bgw.view(np.uint8), size=2 * margin + 1, mode="nearest") > 0
    bgw = bgw.astype(np.float32)
    w = _resample_axes(bgw, shape)
    mean = _resample_axes(sub * bgw, shape) / np.maximum(w, 1e-6)
    head = ndimage.binary_fill_holes(w < 0.5)
    if head.all():
        return np.zeros(shape, np.float32)
    # Noise floor: the background farther than ``far`` grid voxels from the head, or (head filling most
    # of the field of view) the farther half of the background.
    dist = ndimage.distance_transform_cdt(~head, metric="chessboard") if head.any() else np.full(shape, 10**6)
    cut = min(float(far), float(np.median(dist[~head])))
    floor = float(np.median(mean[~head & (dist >= cut)]))
    least = ZEROED_AIR * max(hi, 1e-6)
    if zeroed_neutral and floor < least:
        return np.zeros(shape, np.float32)
    floor = max(floor, least)
    out = np.clip(mean / floor - 1.0, -1.0, clip)
    out[head] = 0.0
    return out.astype(np.float32)


def preprocess(volume: Volume, spec: PreprocessSpec, modality: str | None = None,
               cache: dict[Any, Any] | None = None) -> np.ndarray:
    """Volume -> float32 ``[C, D, H, W]`` model input following ``spec``.

    ``modality`` overrides ``volume.modality`` (NIfTI inputs carry none). MR gets one intensity channel,
    zero-padded to ``spec.in_channels`` when the model also takes multi-window CT.
    """
    mod = (modality or volume.modality or "").upper()
    if mod not in ("CT", "MR"):
        raise ScanQCError(ErrorCode.USAGE, f"cannot preprocess modality {mod or 'unknown'!r}: CT or MR only")
    if spec.mode == "abdomen_hu":
        from scanqc.checks.abdomen_anatomy import feature_input

        return feature_input(volume, spec.features or spec.shape[2], cache, spec.localisation_network)
    if spec.mode == "mm_grid":
        raise ScanQCError(ErrorCode.BAD_MODEL, "mm_grid models run through scanqc.checks.abdomen_seg, not preprocess()")
    arr, spacing = canonicalize(volume)
    inner = (spec.shape[0] - 2 * spec.pad_slices, spec.shape[1], spec.shape[2])
    res = resample_fit(arr, inner, spec.antialias, cache)
    if mod == "CT":
        chans = window_ct(res, spec.ct_windows)
        if spec.ct_max_windows:
            chans = np.concatenate([chans, window_ct(resample_max(arr, inner, spacing), spec.ct_max_windows)])
    else:
        chans = normalize_mr(res, spec.mr_percentiles, spec.mr_clip)[None]
    n_ct = len(spec.ct_windows) + len(spec.ct_max_windows)
    n_int = max(n_ct if "CT" in spec.modalities else 1, 1 if "MR" in spec.modalities else 0)
    if chans.shape[0] < n_int:
        chans = np.concatenate([chans, np.zeros((n_int - chans.shape[0], *inner), np.float32)])
    if spec.background_channel:
        bg = background_map(arr, inner, spec.background_margin, spec.background_far, spec.background_clip,
                            spec.background_zeroed_neutral)
        chans = np.concatenate([chans, bg[None]])
    if spec.pad_slices:
        p = spec.pad_slices
        chans = np.pad(chans, [(0, 0), (p, p), (0, 0), (0, 0)], mode="constant")
        mask = np.zeros((1, *spec.shape), np.float32)
        mask[:, p:spec.shape[0] - p] = 1.0
        chans = np.concatenate([chans, mask])
    return np.ascontiguousarray(chans, dtype=np.float32)
