"""Rigid subject motion during an MR acquisition, simulated in k-space.

Model (Shaw et al., "MRI k-space motion artefact augmentation: model robustness and task-specific
uncertainty", MIDL 2019; the same composition as TorchIO's ``RandomMotion``): the object is
resampled in several rigid poses; each pose is Fourier transformed and contributes the
phase-encode lines acquired while the subject held that pose; the inverse transform of the
composite k-space, magnitude taken, is the corrupted image.

Array convention (scanqc ``[z, y, x]``): readout along x (axis 2), phase encode along y (axis 1);
3D acquisitions also phase-encode along z (axis 0), 2D multi-slice acquisitions acquire each slice
separately (interleaved: one ky line of every slice per TR, so a pose change hits the same ky lines
in all slices).

Severity (0..1) sets both things that decide how bad motion looks:

- displacement: rotations up to ``severity * max_rotation_deg`` and translations up to
  ``severity * max_translation_mm`` per pose;
- timing relative to the k-space centre: moved poses fill only lines whose normalised k-space
  radius is at least ``r_on = 0.04 + (1 - severity) * 0.76 * U(0.85, 1)``. The centre (image contrast)
  belongs to the reference pose; at severity 1 the motion reaches the centre itself.

``severity == 0`` returns the input unchanged. :func:`apply_motion` is the deterministic twin of
:func:`random_motion_params` + :func:`apply_motion` = :func:`simulate_motion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from scanqc.errors import ErrorCode, ScanQCError

Ordering = Literal["linear", "centric"]
Acquisition = Literal["2d", "3d"]
ORDERINGS = ("linear", "centric")
ACQUISITIONS = ("2d", "3d")
# Severity thresholds shared by motion and ghosting labels; the gap (0.4, 0.6) is never sampled by
# the generator so the classes do not overlap.
R_ON_FLOOR = 0.04
LABEL_RANGES = {"none": (0.0, 0.0), "mild": (0.15, 0.4), "severe": (0.6, 1.0)}
# Labels follow what the image shows, as a reader's label would: a moved case is kept only if its artefact changed
# the brain by at least this share of the Rician noise sigma (RMS, before noise); otherwise the generator draws the
# case again. A quarter to a third of mild draws fall below it (at most ~1.5 % of white-matter signal, invisible
# under the noise; docs/data.md "Visible-artefact rule"). 0 keeps every draw, as data made before 2026-11-22
# (session 6) did.
MIN_ARTEFACT_TO_NOISE = 0.3


def severity_label(severity: float) -> str:
    """Class name for a severity: 0 -> none, < 0.5 -> mild, otherwise severe."""
    if severity <= 0:
        return "none"
    return "mild" if severity < 0.5 else "severe"


@dataclass(frozen=True)
class Pose:
    """A rigid pose: rotation (degrees about array axes z, y, x) about the volume centre, then a
    translation (mm along array axes z, y, x)."""

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def is_identity(self) -> bool:
        return not any(self.rotation_deg) and not any(self.translation_mm)


@dataclass(frozen=True)
class MotionParams:
    """Poses and when they were held: pose ``i`` fills lines acquired at normalised times
    ``[times[i], times[i + 1])`` (``times[0] == 0``). ``poses[0]`` need not be the identity."""

    poses: tuple[Pose, ...] = (Pose(),)
    times: tuple[float, ...] = (0.0,)
    ordering: Ordering = "linear"
    acquisition: Acquisition = "3d"
    severity: float = 0.0
    r_on: float = 1.0  # normalised k radius beyond which moved poses fill lines (provenance)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.poses) != len(self.times) or not self.poses:
            raise ScanQCError(ErrorCode.USAGE, f"need one start time per pose, got {len(self.poses)} poses and "
                                               f"times {self.times}")
        if self.times[0] != 0 or any(b < a for a, b in zip(self.times, self.times[1:])):
            raise ScanQCError(ErrorCode.USAGE, f"pose times must start at 0 and increase, got {self.times}")
        if self.ordering not in ORDERINGS:
            raise ScanQCError(ErrorCode.USAGE, f"ordering must be one of {ORDERINGS}, got {self.ordering!r}")
        if self.acquisition not in ACQUISITIONS:
            raise ScanQCError(ErrorCode.USAGE, f"acquisition must be one of {ACQUISITIONS}, got {self.acquisition!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["poses"] = [{"rotation_deg": [round(v, 3) for v in p.rotation_deg],
                       "translation_mm": [round(v, 3) for v in p.translation_mm]} for p in self.poses]
        d["times"] = [round(t, 4) for t in self.times]
        return d


def _check_severity(severity: float) -> float:
    s = float(severity)
    if not np.isfinite(s) or not 0.0 <= s <= 1.0:
        raise ScanQCError(ErrorCode.USAGE, f"severity must be in [0, 1], got {severity!r}")
    return s


def line_grid(shape: Sequence[int], ordering: Ordering, acquisition: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Acquisition time (0..1) and normalised k radius (0 centre .. 1 edge) of every phase-encode line.

    Returned arrays have shape ``(nz, ny)`` for 3D and ``(1, ny)`` for 2D (same lines every slice),
    indexed in fftshifted order (centre line at ``n // 2``).
    """
    nz, ny = int(shape[0]), int(shape[1])
    ky = (np.arange(ny) - ny // 2) / (ny / 2)
    if acquisition == "3d":
        kz = (np.arange(nz) - nz // 2) / (nz / 2)
        radius = np.sqrt(kz[:, None] ** 2 + ky[None, :] ** 2)
        if ordering == "linear":
            # ky outer loop, kz inner loop: time follows ky, the k-space centre comes at t = 0.5.
            order = np.arange(nz * ny).reshape(ny, nz).T
        else:
            order = np.empty(nz * ny, dtype=np.int64)
            order[np.argsort(radius.ravel(), kind="stable")] = np.arange(nz * ny)
            order = order.reshape(nz, ny)
        times = order / float(nz * ny)
    else:
        radius = np.abs(ky)[None, :]
        if ordering == "linear":
            times = (np.arange(ny) / float(ny))[None, :]
        else:
            order = np.empty(ny, dtype=np.int64)
            order[np.argsort(np.abs(ky), kind="stable")] = np.arange(ny)
            times = (order / float(ny))[None, :]
    return times, radius


def rigid_transform(array: np.ndarray, pose: Pose, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    order: int = 1) -> np.ndarray:
    """The object in ``pose``: rotate about the array centre in physical space, then translate."""
    if pose.is_identity:
        return array
    s = np.asarray(spacing, dtype=np.float64)
    r = Rotation.from_euler("xyz", pose.rotation_deg, degrees=True).as_matrix()
    c = (np.asarray(array.shape) - 1) / 2.0
    # output voxel o shows input voxel i with p_out = R p_in + t, p = S (index - c).
    m = np.diag(1 / s) @ r.T @ np.diag(s)
    offset = c - m @ c - np.diag(1 / s) @ r.T @ np.asarray(pose.translation_mm, dtype=np.float64)
    return ndimage.affine_transform(array, m, offset=offset, order=order, mode="constant", cval=0.0)


def _fft_axes(acquisition: Acquisition) -> tuple[int, ...]:
    return (0, 1, 2) if acquisition == "3d" else (1, 2)


def pose_line_masks(params: MotionParams, shape: Sequence[int]) -> list[np.ndarray]:
    """Boolean ``(nz|1, ny)`` mask of the lines each pose fills (they partition k-space)."""
    times, _ = line_grid(shape, params.ordering, params.acquisition)
    bounds = [*params.times, np.inf]
    return [(times >= bounds[i]) & (times < bounds[i + 1]) for i in range(len(params.poses))]


def moved_line_mask(params: MotionParams, shape: Sequence[int]) -> np.ndarray:
    """Lines filled by a pose other than the identity (the corrupted part of k-space)."""
    masks = pose_line_masks(params, shape)
    out = np.zeros_like(masks[0])
    for pose, m in zip(params.poses, masks):
        if not pose.is_identity:
            out |= m
    return out


def motion_kspace(array: np.ndarray, params: MotionParams, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Composite k-space (complex, fftshifted along the transformed axes)."""
    axes = _fft_axes(params.acquisition)
    kspace = np.zeros(array.shape, dtype=np.complex64)
    for pose, mask in zip(params.poses, pose_line_masks(params, array.shape)):
        if not mask.any():
            continue
        moved = rigid_transform(array, pose, spacing)
        k = np.fft.fftshift(np.fft.fftn(moved.astype(np.complex64), axes=axes), axes=axes)
        m = mask[:, :, None]
        kspace = np.where(m, k, kspace)
    return kspace


def apply_motion(array: np.ndarray, params: MotionParams, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Deterministic motion: magnitude image of :func:`motion_kspace`. Identity poses -> input."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ScanQCError(ErrorCode.USAGE, f"motion needs a 3D array, got shape {array.shape}")
    if all(p.is_identity for p in params.poses):
        return array.copy()
    axes = _fft_axes(params.acquisition)
    k = motion_kspace(array, params, spacing)
    return np.abs(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes)).astype(np.float32)


def random_motion_params(severity: float, rng: np.random.Generator, shape: Sequence[int],
                         ordering: Ordering | None = None, acquisition: Acquisition | None = None,
                         n_moves: int | None = None, max_rotation_deg: float = 10.0,
                         max_translation_mm: float = 10.0) -> MotionParams:
    """Draw poses and timing for ``severity`` (see the module docstring for the mapping)."""
    s = _check_severity(severity)
    ordering = ordering or ("linear", "centric")[int(rng.integers(2))]
    acquisition = acquisition or ("3d", "2d")[int(rng.integers(2))]
    if ordering not in ORDERINGS:
        raise ScanQCError(ErrorCode.USAGE, f"ordering must be one of {ORDERINGS}, got {ordering!r}")
    if acquisition not in ACQUISITIONS:
        raise ScanQCError(ErrorCode.USAGE, f"acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
    if s == 0:
        return MotionParams(ordering=ordering, acquisition=acquisition)
    n_moves = int(n_moves or rng.integers(1, 4))
    if n_moves < 1:
        raise ScanQCError(ErrorCode.USAGE, f"n_moves must be >= 1, got {n_moves}")
    # A small floor keeps the very centre in the reference pose even at severity 1; otherwise a
    # centric scan would just show the moved object, sharp.
    r_on = R_ON_FLOOR + (1.0 - s) * (0.8 - R_ON_FLOOR) * float(rng.uniform(0.85, 1.0))
    times, radius = line_grid(shape, ordering, acquisition)

    def moved_pose() -> Pose:
        rot = rng.uniform(-1, 1, 3) * s * max_rotation_deg
        tra = rng.uniform(-1, 1, 3) * s * max_translation_mm
        # At least one clearly non-zero component so the severity is really expressed.
        i = int(rng.integers(3))
        rot[i] = np.sign(rot[i] or 1.0) * max(abs(rot[i]), 0.6 * s * max_rotation_deg)
        tra[i] = np.sign(tra[i] or 1.0) * max(abs(tra[i]), 0.6 * s * max_translation_mm)
        if acquisition == "2d":
            tra[0] *= 0.5  # through-plane motion is usually smaller than in-plane for head scans
        return Pose(tuple(float(v) for v in rot), tuple(float(v) for v in tra))

    if ordering == "centric":
        # Periphery comes last: move once every line inside r_on has been acquired.
        inside = times[radius < r_on]
        t_on = float(inside.max() + 1e-9) if inside.size else 0.0
        window = (t_on, 1.0)
        late = True
    else:
        late = bool(rng.integers(2))
        # Centre is acquired around t = 0.5 (ky outer loop); |ky| >= r_on outside this band.
        window = ((1.0 + r_on) / 2.0, 1.0) if late else (0.0, (1.0 - r_on) / 2.0)
    w0, w1 = window
    cuts = np.sort(rng.uniform(w0, w1, n_moves - 1)) if n_moves > 1 else np.array([])
    starts = [w0, *cuts.tolist()]
    poses = [moved_pose() for _ in range(n_moves)]
    if late:
        all_poses, all_times = [Pose(), *poses], [0.0, *starts]
        if w0 <= 0.0:
            all_poses, all_times = poses, [0.0, *cuts.tolist()]
    else:
        # Moved early, back in the reference pose from w1 on (the pose that holds the centre).
        all_poses, all_times = [*poses, Pose()], [0.0, *cuts.tolist(), w1]
    return MotionParams(tuple(all_poses), tuple(all_times), ordering, acquisition, s, float(r_on))


def simulate_motion(array: np.ndarray, severity: float, rng: np.random.Generator,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0), **kwargs) -> tuple[np.ndarray, MotionParams]:
    """Random rigid motion of the given severity; returns the image and its parameters.

    ``kwargs`` go to :func:`random_motion_params` (``ordering``, ``acquisition``, ``n_moves``,
    ``max_rotation_deg``, ``max_translation_mm``).
    """
    array = np.asarray(array, dtype=np.float32)
    params = random_motion_params(severity, rng, array.shape, **kwargs)
    return apply_motion(array, params, spacing), params
