"""Synthetic QC phantoms with controllable faults, written as DICOM: test truth for phantom QC.

Four phantoms, built analytically in mm (anti-aliased edges, so measurements are not limited by pixel
steps), with the geometry the measurements in :mod:`scanqc.measure` assume:

- ``ct_water``: a 200 mm water cylinder in air (daily/constancy QC phantom).
- ``ct_acr``: an ACR CT 464-like phantom, 200 mm diameter, four 40 mm modules: (1) bone, polyethylene,
  air, acrylic and water inserts plus a 23 degree slice-thickness ramp; (2) a 90 HU background with low-
  contrast rods (+6 HU; 25 mm and 6..2 mm); (3) uniform water; (4) uniform (the ACR's resolution bars are not
  simulated). HU truth values are the centres of the ACR acceptance ranges.
- ``mr_uniform``: a 190 mm uniform cylinder (5 slices of 5 mm).
- ``mr_acr``: an ACR Large MRI Phantom-like axial series: 11 slices, 5 mm thick, 10 mm apart; slice 1 holds
  the slice-thickness insert (a dark block with two crossed 1:10 ramps), the others are uniform.

Faults (:class:`PhantomFaults`) and the quantity each one sets, which the measurement must recover:

============================  ========================================================================
``hu_offset``                 CT: added to every pixel (calibration offset) -> ``water_hu``
``noise``                     CT: noise SD in HU (default 5) -> ``noise_hu``; MR: Rician sigma (signal
                              1000, default 10) -> ``snr`` = 1000 / sigma
``cupping_hu``                CT: radial ``c (r/R)^2`` (negative: cupping) -> ``uniformity_hu`` =
                              ``c (r_edge/R)^2`` at the edge ROIs
``nonuniformity_pct``         MR: linear gain along x such that ``piu_pct`` = 100 - value
``ghosting_pct``              MR: N/2 ghost along the phase-encode direction (rows) -> ``ghosting_pct``
``distortion_mm``             MR: gradient scale error along x -> ``diameter_error_mm``
``slice_thickness_mm``        true slice thickness (header keeps the nominal) -> ``slice_thickness_mm``
============================  ========================================================================

Noise needs randomness; every function takes an explicit ``seed``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scanqc.datasets.noise import apply_ct_noise, apply_rician_noise
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.io.dicom_write import write_dicom_series
from scanqc.measure import mr as mr_measure
from scanqc.measure.ct import ACR_CT, AcrCtGeometry
from scanqc.measure.mr import ACR_MR, AcrMrGeometry
from scanqc.volume import Volume

KINDS = ("ct_water", "ct_acr", "mr_uniform", "mr_acr")
# Centres of the ACR CT acceptance ranges (see scanqc.measure.criteria).
CT_MATERIAL_HU = {"bone": 910.0, "polyethylene": -95.0, "air": -987.0, "acrylic": 122.0, "water": 0.0}
CT_AIR_HU = -1000.0
CT_RAMP_HU = 400.0  # ribbon above its water background
CT_LOW_CONTRAST_BG_HU, CT_LOW_CONTRAST_DELTA_HU = 90.0, 6.0
MR_SIGNAL = 1000.0
DEFAULT_CT_NOISE_HU, DEFAULT_MR_SIGMA = 5.0, 10.0


@dataclass(frozen=True)
class PhantomFaults:
    hu_offset: float = 0.0
    noise: float | None = None
    cupping_hu: float = 0.0
    nonuniformity_pct: float = 0.0
    ghosting_pct: float = 0.0
    distortion_mm: float = 0.0
    slice_thickness_mm: float | None = None


def _grid(matrix: int, fov_mm: float, centre_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    px = fov_mm / matrix
    c = (np.arange(matrix) - (matrix - 1) / 2) * px
    yy, xx = np.meshgrid(c - centre_mm[1], c - centre_mm[0], indexing="ij")
    return xx, yy, px


def _cover(dist_mm: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased inside fraction from a signed distance (negative inside)."""
    return np.clip(0.5 - dist_mm / px, 0.0, 1.0)


def _disc(xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, r: float, px: float) -> np.ndarray:
    return _cover(np.hypot(xx - x0, yy - y0) - r, px)


def _ramp_fraction(xx: np.ndarray, px: float, x0: float, slope: float, z_offset: float, thickness: float,
                   half_len: float, ss: int = 8) -> np.ndarray:
    """Share of each pixel (sub-sampled along x) where a ramp ``z = slope * (x - x0)`` lies within the slab
    ``|z - z_offset| <= thickness / 2`` (a rectangular slice profile) and ``|x - x0| <= half_len``."""
    frac = np.zeros_like(xx)
    for s in range(ss):
        x = xx + (s + 0.5) / ss * px - px / 2
        z = slope * (x - x0)
        frac += (np.abs(z - z_offset) <= thickness / 2) & (np.abs(x - x0) <= half_len)
    return frac / ss


def _check(faults: PhantomFaults, nominal: float) -> float:
    t = faults.slice_thickness_mm if faults.slice_thickness_mm is not None else nominal
    if not (0.2 <= t <= 20):
        raise ScanQCError(ErrorCode.USAGE, f"slice_thickness_mm {t!r} outside 0.2..20 mm")
    return float(t)


def ct_water(faults: PhantomFaults = PhantomFaults(), *, seed: int = 0, matrix: int = 256, fov_mm: float = 250.0,
             n_slices: int = 8, slice_mm: float = 5.0, diameter_mm: float = 200.0,
             centre_mm: tuple[float, float] = (1.3, -0.8)) -> Volume:
    xx, yy, px = _grid(matrix, fov_mm, centre_mm)
    r = diameter_mm / 2
    cov = _disc(xx, yy, 0, 0, r, px)
    img = CT_AIR_HU + (CT_MATERIAL_HU["water"] - CT_AIR_HU) * cov
    img = img + faults.cupping_hu * (np.hypot(xx, yy) / r) ** 2 * cov
    img = ndimage.gaussian_filter(img, 0.6) + faults.hu_offset
    arr = np.repeat(img[None].astype(np.float32), n_slices, axis=0)
    sigma = DEFAULT_CT_NOISE_HU if faults.noise is None else faults.noise
    return Volume(apply_ct_noise(arr, sigma, seed), (slice_mm, px, px), modality="CT")


def ct_acr(faults: PhantomFaults = PhantomFaults(), *, seed: int = 0, matrix: int = 256, fov_mm: float = 250.0,
           slice_mm: float = 5.0, margin_mm: float = 10.0, centre_mm: tuple[float, float] = (1.3, -0.8),
           geometry: AcrCtGeometry = ACR_CT) -> Volume:
    thickness = _check(faults, slice_mm)
    xx, yy, px = _grid(matrix, fov_mm, centre_mm)
    r = geometry.diameter_mm / 2
    outer = _disc(xx, yy, 0, 0, r, px)
    cupping = faults.cupping_hu * (np.hypot(xx, yy) / r) ** 2 * outer
    n = math.ceil((geometry.length_mm + 2 * margin_mm) / slice_mm)
    slices = []
    cache: dict[int, np.ndarray] = {}
    for k in range(n):
        z = -margin_mm + (k + 0.5) * slice_mm
        if not 0 <= z < geometry.length_mm:
            slices.append(np.full(xx.shape, CT_AIR_HU))
            continue
        m = int(z // geometry.module_length_mm)
        z_in = z - (m + 0.5) * geometry.module_length_mm  # offset from the module centre
        if m != 0 and m in cache:
            slices.append(cache[m])
            continue
        water = CT_MATERIAL_HU["water"]
        bg = CT_LOW_CONTRAST_BG_HU if m == 1 else water
        img = CT_AIR_HU + (bg - CT_AIR_HU) * outer
        if m == 0:
            ri = geometry.insert_diameter_mm / 2
            for name, (x0, y0) in geometry.inserts.items():
                img += (CT_MATERIAL_HU[name] - bg) * _disc(xx, yy, x0, y0, ri, px)
            rx, ry = geometry.ramp_center_mm
            rows = _cover(np.abs(yy - ry) - geometry.ramp_halfheight_mm, px)
            img += CT_RAMP_HU * rows * _ramp_fraction(xx, px, rx, geometry.ramp_tan, z_in, thickness,
                                                      geometry.ramp_search_mm + 5)
        elif m == 1:
            (ax, ay) = geometry.rod_center_mm
            img += CT_LOW_CONTRAST_DELTA_HU * _disc(xx, yy, ax, ay, geometry.rod_diameter_mm / 2, px)
            for i, d in enumerate((6.0, 5.0, 4.0, 3.0, 2.0)):  # the smaller rods, for the look of it
                a = math.radians(200 + 30 * i)
                img += CT_LOW_CONTRAST_DELTA_HU * _disc(xx, yy, 55 * math.cos(a), -55 * math.sin(a), d / 2, px)
        img = img + cupping
        if m != 0:
            cache[m] = img
        slices.append(img)
    arr = ndimage.gaussian_filter(np.stack(slices), (0, 0.6, 0.6)) + faults.hu_offset
    sigma = DEFAULT_CT_NOISE_HU if faults.noise is None else faults.noise
    return Volume(apply_ct_noise(arr.astype(np.float32), sigma, seed), (slice_mm, px, px), modality="CT")


def _mr_slice(xx: np.ndarray, yy: np.ndarray, px: float, faults: PhantomFaults, diameter_mm: float) -> np.ndarray:
    r = diameter_mm / 2
    scale = 1 + faults.distortion_mm / diameter_mm  # gradient scale error along x
    dist = np.hypot(xx / scale, yy) - r
    return MR_SIGNAL * _cover(dist * min(scale, 1.0), px)


def _mr_finish(stack: np.ndarray, xx: np.ndarray, faults: PhantomFaults, seed: int) -> np.ndarray:
    # Gain along x chosen so the 1 cm^2 ROI extremes inside the 200 cm^2 ROI give PIU = 100 - value.
    r_large = math.sqrt(mr_measure.LARGE_ROI_AREA_MM2 / math.pi)
    r_small = math.sqrt(mr_measure.SMALL_ROI_AREA_MM2 / math.pi)
    k = faults.nonuniformity_pct / 100 / (r_large - r_small)
    out = stack * (1 + k * xx)[None]
    if faults.ghosting_pct:
        out = out + faults.ghosting_pct / 100 * np.roll(out, out.shape[1] // 2, axis=1)
    out = ndimage.gaussian_filter(out, (0, 0.5, 0.5))
    sigma = DEFAULT_MR_SIGMA if faults.noise is None else faults.noise
    return apply_rician_noise(out.astype(np.float32), sigma, seed)


def mr_uniform(faults: PhantomFaults = PhantomFaults(), *, seed: int = 0, matrix: int = 256, fov_mm: float = 250.0,
               n_slices: int = 5, slice_mm: float = 5.0, diameter_mm: float = ACR_MR.inside_diameter_mm,
               centre_mm: tuple[float, float] = (0.9, 1.4)) -> Volume:
    xx, yy, px = _grid(matrix, fov_mm, centre_mm)
    img = _mr_slice(xx, yy, px, faults, diameter_mm)
    arr = _mr_finish(np.repeat(img[None], n_slices, axis=0), xx, faults, seed)
    return Volume(arr, (slice_mm, px, px), modality="MR")


def mr_acr(faults: PhantomFaults = PhantomFaults(), *, seed: int = 0, matrix: int = 256, fov_mm: float = 250.0,
           centre_mm: tuple[float, float] = (0.9, 1.4), geometry: AcrMrGeometry = ACR_MR) -> Volume:
    """11 axial slices 10 mm apart; the nominal thickness (5 mm) goes into the header, not the spacing."""
    thickness = _check(faults, 5.0)
    xx, yy, px = _grid(matrix, fov_mm, centre_mm)
    base = _mr_slice(xx, yy, px, faults, geometry.inside_diameter_mm)
    first = base.copy()
    block = _cover(np.maximum(np.abs(xx) - geometry.block_halfwidth_mm, np.abs(yy) - geometry.block_halfheight_mm), px)
    first *= 1 - block
    for (lo, hi), sign in zip(geometry.ramp_rows_mm, (1, -1)):
        rows = _cover(np.abs(yy - (lo + hi) / 2) - (hi - lo) / 2, px)
        first += MR_SIGNAL * rows * block * _ramp_fraction(xx, px, 0.0, sign * geometry.ramp_slope, 0.0, thickness,
                                                           geometry.block_halfwidth_mm)
    stack = np.stack([first] + [base] * (geometry.n_slices - 1))
    return Volume(_mr_finish(stack, xx, faults, seed), (10.0, px, px), modality="MR")


BUILDERS = {"ct_water": ct_water, "ct_acr": ct_acr, "mr_uniform": mr_uniform, "mr_acr": mr_acr}
DESCRIPTIONS = {"ct_water": "QA WATER PHANTOM", "ct_acr": "ACR CT PHANTOM", "mr_uniform": "QA UNIFORMITY PHANTOM",
                "mr_acr": "ACR MR PHANTOM T1"}


def scanner_header(kind: str, *, acquired: dt.datetime, station: str = "QA_CT1", manufacturer: str = "ACME",
                   model: str = "Scanomat 64", serial: str = "SN-0001", software: str = "VB20",
                   field_strength_t: float = 1.5, nominal_thickness_mm: float = 5.0) -> dict[str, Any]:
    """DICOM attributes of a phantom acquisition following the phantom naming conventions."""
    d, t = acquired.strftime("%Y%m%d"), acquired.strftime("%H%M%S")
    hdr: dict[str, Any] = {
        "PatientName": "PHANTOM^QA", "PatientID": "PHANTOM", "SeriesDescription": DESCRIPTIONS[kind],
        "ProtocolName": DESCRIPTIONS[kind], "StudyDescription": "SCANNER QUALIFICATION", "Manufacturer": manufacturer,
        "ManufacturerModelName": model, "DeviceSerialNumber": serial, "SoftwareVersions": software,
        "StationName": station, "StudyDate": d, "SeriesDate": d, "AcquisitionDate": d, "StudyTime": t,
        "SeriesTime": t, "AcquisitionTime": t, "SliceThickness": nominal_thickness_mm,
    }
    if kind.startswith("ct"):
        hdr.update(KVP=120, ConvolutionKernel="STANDARD", BodyPartExamined="PHANTOM")
    else:
        hdr.update(MagneticFieldStrength=field_strength_t, RepetitionTime=500.0, EchoTime=20.0,
                   MRAcquisitionType="2D", BodyPartExamined="PHANTOM")
    return hdr


def write_phantom(kind: str, folder: Path | str, faults: PhantomFaults = PhantomFaults(), *, seed: int = 0,
                  acquired: dt.datetime | None = None, header: Mapping[str, Any] | None = None,
                  build: Mapping[str, Any] | None = None, **scanner: Any) -> list[Path]:
    """Build phantom ``kind`` with ``faults`` and write it as a DICOM series into ``folder``.

    Args:
        kind: one of :data:`KINDS`.
        faults: injected faults (see the module table).
        seed: noise seed.
        acquired: acquisition date/time (default now, UTC).
        header: extra or overriding DICOM attributes.
        build: keyword arguments for the builder (``matrix``, ``fov_mm``, ``n_slices``...).
        scanner: ``station``, ``manufacturer``, ``model``, ``serial``, ``software``, ``field_strength_t``
            for :func:`scanner_header`.
    """
    if kind not in BUILDERS:
        raise ScanQCError(ErrorCode.USAGE, f"phantom kind {kind!r} not one of {list(KINDS)}")
    vol = BUILDERS[kind](faults, seed=seed, **dict(build or {}))
    acquired = acquired or dt.datetime.now(dt.timezone.utc)
    hdr = scanner_header(kind, acquired=acquired, **scanner)
    hdr.update(header or {})
    return write_dicom_series(vol, folder, "CT" if kind.startswith("ct") else "MR", header=hdr)
