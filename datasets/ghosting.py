"""Periodic motion ghosting (respiration, pulsation) simulated in k-space.

If the signal or position of the object changes periodically while phase-encode lines are acquired
one after another, k-space line ``ky`` (acquired at time ``ky * TR``) is modulated by a periodic
function of ``ky``. A modulation ``1 + a cos(2 pi ky / P + phi)`` (pulsatile signal change) is the
sum of the object and two copies weighted ``a / 2`` shifted by ``+-N / P`` pixels along the phase-
encode axis: discrete ghosts at multiples of N/P (Wood & Henkelman, Med Phys 1985, "MR image
artifacts from periodic motion"; Bernstein, King & Zhou, *Handbook of MRI Pulse Sequences*, 2004).
A periodic translation ``d sin(2 pi ky / P)`` (respiration) gives ghosts at the same offsets with
Bessel-function weights.

Severity (0..1) scales the modulation: amplitude ``a = 0.5 * severity`` (kind 'amplitude') or peak
displacement ``d = 8 mm * severity`` (kind 'position'). :func:`apply_ghosting` is the
deterministic twin of :func:`random_ghosting_params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError

GhostKind = Literal["amplitude", "position"]
MAX_AMPLITUDE = 0.5
MAX_DISPLACEMENT_MM = 8.0


@dataclass(frozen=True)
class GhostParams:
    period_lines: float  # period of the motion in phase-encode lines (TRs)
    kind: GhostKind = "amplitude"
    strength: float = 0.0  # amplitude a (kind amplitude) or displacement d in mm (kind position)
    phase_rad: float = 0.0
    severity: float = 0.0
    axis: int = 1  # phase-encode axis of the [z, y, x] array

    def __post_init__(self) -> None:
        if not np.isfinite(self.period_lines) or self.period_lines < 2:
            raise ScanQCError(ErrorCode.USAGE, f"ghost period must be >= 2 lines (Nyquist), got {self.period_lines!r}")
        if self.kind not in ("amplitude", "position"):
            raise ScanQCError(ErrorCode.USAGE, f"ghost kind must be 'amplitude' or 'position', got {self.kind!r}")
        if self.axis not in (0, 1, 2):
            raise ScanQCError(ErrorCode.USAGE, f"phase-encode axis must be 0, 1 or 2, got {self.axis!r}")

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def ghost_offset(n: int, period_lines: float) -> float:
    """Distance in pixels between the object and its first ghost along the phase-encode axis."""
    return n / float(period_lines)


def apply_ghosting(array: np.ndarray, params: GhostParams, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Deterministic ghosting; ``strength == 0`` returns the input unchanged."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ScanQCError(ErrorCode.USAGE, f"ghosting needs a 3D array, got shape {array.shape}")
    if params.strength == 0:
        return array.copy()
    ax = params.axis
    n = array.shape[ax]
    k = np.fft.fft(array.astype(np.complex64), axis=ax)
    idx = np.arange(n)  # acquisition order: line ky is acquired at time ky (linear ordering)
    freq = np.fft.fftfreq(n)  # cycles per pixel for each stored k index
    order = np.argsort(freq, kind="stable")  # stored index -> acquisition rank (-N/2 .. N/2-1)
    t = np.empty(n)
    t[order] = idx
    arg = 2 * np.pi * t / params.period_lines + params.phase_rad
    if params.kind == "amplitude":
        mod = 1.0 + params.strength * np.cos(arg)
    else:
        shift_px = params.strength / float(spacing[ax]) * np.sin(arg)
        mod = np.exp(-2j * np.pi * freq * shift_px)
    shape = [1, 1, 1]
    shape[ax] = n
    k = k * mod.reshape(shape).astype(np.complex64)
    return np.abs(np.fft.ifft(k, axis=ax)).astype(np.float32)


def random_ghosting_params(severity: float, rng: np.random.Generator, n_lines: int, axis: int = 1,
                           kind: GhostKind | None = None) -> GhostParams:
    """Period giving ghost offsets between N/8 and N/2, strength from ``severity``."""
    s = float(severity)
    if not np.isfinite(s) or not 0.0 <= s <= 1.0:
        raise ScanQCError(ErrorCode.USAGE, f"severity must be in [0, 1], got {severity!r}")
    kind = kind or ("amplitude", "position")[int(rng.integers(2))]
    period = float(rng.uniform(2.0, 8.0))
    strength = s * (MAX_AMPLITUDE if kind == "amplitude" else MAX_DISPLACEMENT_MM) * float(rng.uniform(0.85, 1.0))
    return GhostParams(period, kind, strength if s > 0 else 0.0, float(rng.uniform(0, 2 * np.pi)), s, axis)


def simulate_ghosting(array: np.ndarray, severity: float, rng: np.random.Generator,
                      spacing: Sequence[float] = (1.0, 1.0, 1.0), axis: int = 1,
                      kind: GhostKind | None = None) -> tuple[np.ndarray, GhostParams]:
    """Random periodic ghosting of the given severity; returns the image and its parameters."""
    params = random_ghosting_params(severity, rng, np.asarray(array).shape[axis], axis, kind)
    return apply_ghosting(array, params, spacing), params
