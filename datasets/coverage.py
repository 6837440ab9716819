"""Coverage cases: crop a volume so required anatomy is cut at a labeled end, or fully kept.

Along the array axis closest to the body axis, the required anatomy (brain from vertex to the
bottom of the cerebellum; abdomen from the liver dome to the lower kidney poles) spans slices
``[inferior, superior]``. A ``superior`` case removes ``cut_fraction`` of that extent at the top,
so the first superior slice runs through the anatomy; ``inferior`` likewise at the bottom; a
``full`` case keeps the anatomy with ``margin_mm`` of tissue/background beyond both ends (at least
one slice, so neither end slice touches it). Missing room is padded with ``fill``.
:func:`crop_coverage` is deterministic; :func:`random_coverage` draws the cut and margins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scanqc.datasets.geometry import crop_pad, crop_pad_array, superior_axis

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

End = Literal["full", "superior", "inferior"]
ENDS: tuple[str, ...] = ("full", "superior", "inferior")


@dataclass(frozen=True)
class CoverageParams:
    end: End = "full"
    margin_superior_mm: float = 10.0  # kept beyond the anatomy where that end is not cut
    margin_inferior_mm: float = 10.0
    cut_fraction: float = 0.0  # share of the anatomy's extent removed at the cut end

    def __post_init__(self) -> None:
        if self.end not in ENDS:
            raise ScanQCError(ErrorCode.USAGE, f"coverage end must be one of {list(ENDS)}, got {self.end!r}")
        if self.end != "full" and not 0 < self.cut_fraction < 1:
            raise ScanQCError(ErrorCode.USAGE,
                              f"cut_fraction must be in (0, 1) for a cut case, got {self.cut_fraction!r}")
        if min(self.margin_superior_mm, self.margin_inferior_mm) < 0:
            raise ScanQCError(ErrorCode.USAGE, "margins must be >= 0 mm, got "
                                               f"{(self.margin_superior_mm, self.margin_inferior_mm)}")

    @property
    def missing(self) -> list[str]:
        return [] if self.end == "full" else [self.end]

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def anatomy_span(mask: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last index along ``axis`` where ``mask`` is set."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    idx = np.flatnonzero(np.asarray(mask).any(axis=other))
    if idx.size == 0:
        raise ScanQCError(ErrorCode.USAGE, "required-anatomy mask is empty; nothing to cover")
    return int(idx[0]), int(idx[-1])


def end_touches(mask: np.ndarray, volume: Volume) -> list[str]:
    """Which ends ('superior', 'inferior') have required anatomy in their outermost slice."""
    ax, sign = superior_axis(volume)
    first = np.take(mask, 0, axis=ax).any()
    last = np.take(mask, mask.shape[ax] - 1, axis=ax).any()
    sup, inf = (last, first) if sign > 0 else (first, last)
    return [name for name, hit in (("superior", sup), ("inferior", inf)) if hit]


def crop_coverage(volume: Volume, mask: np.ndarray, params: CoverageParams,
                  fill: float = 0.0) -> tuple[Volume, np.ndarray, dict]:
    """Crop/pad ``volume`` and ``mask`` along the body axis per ``params``.

    Returns the new volume, the new mask and info (slices kept, anatomy extent, mm cut).
    """
    if mask.shape != volume.shape:
        raise ScanQCError(ErrorCode.USAGE, f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    ax, sign = superior_axis(volume)
    sp = volume.spacing[ax]
    lo, hi = anatomy_span(mask, ax)
    extent = hi - lo + 1
    if params.end != "full" and extent < 4:
        raise ScanQCError(ErrorCode.USAGE, f"anatomy spans only {extent} slices; too few to cut one end")
    cut = max(2, round(params.cut_fraction * extent)) if params.end != "full" else 0
    cut = min(cut, extent - 2)
    m_sup = max(1, int(np.ceil(params.margin_superior_mm / sp)))
    m_inf = max(1, int(np.ceil(params.margin_inferior_mm / sp)))
    # Work in "inferior -> superior" index terms, then map to array ends.
    if sign > 0:
        inf_idx, sup_idx, n = lo, hi, volume.shape[ax]
        keep_top = sup_idx - cut if params.end == "superior" else sup_idx + m_sup  # last kept index
        keep_bottom = inf_idx + cut if params.end == "inferior" else inf_idx - m_inf  # first kept index
        before, after = -keep_bottom, keep_top - (n - 1)
    else:
        n = volume.shape[ax]
        sup_idx, inf_idx = lo, hi
        keep_first = sup_idx + cut if params.end == "superior" else sup_idx - m_sup
        keep_last = inf_idx - cut if params.end == "inferior" else inf_idx + m_inf
        before, after = -keep_first, keep_last - (n - 1)
    b = [0, 0, 0]
    a = [0, 0, 0]
    b[ax], a[ax] = before, after
    out = crop_pad(volume, b, a, fill)
    out_mask = crop_pad_array(mask, b, a, False)
    info = {"end": params.end, "missing": params.missing, "axis": ax, "cut_slices": cut,
            "cut_mm": round(cut * sp, 2), "anatomy_slices": extent, "params": params.to_dict()}
    return out, out_mask, info


def random_coverage(rng: np.random.Generator, end: str, margin_mm: tuple[float, float] = (4.0, 40.0),
                    cut_fraction: tuple[float, float] = (0.05, 0.35)) -> CoverageParams:
    """Margins U(margin_mm) at uncut ends; cut U(cut_fraction) of the anatomy at the labeled end."""
    if end not in ENDS:
        raise ScanQCError(ErrorCode.USAGE, f"coverage end must be one of {list(ENDS)}, got {end!r}")
    cf = float(rng.uniform(*cut_fraction)) if end != "full" else 0.0
    return CoverageParams(end, float(rng.uniform(*margin_mm)), float(rng.uniform(*margin_mm)), cf)  # type: ignore[arg-type]
