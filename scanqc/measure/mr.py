"""MR phantom measurements: uniform cylinder and an ACR Large MRI Phantom-like series.

Methods follow the ACR "Phantom Test Guidance for Use of the Large MRI Phantom for the ACR MRI
Accreditation Program" (ACR, 2018 revision, https://www.acraccreditation.org/-/media/ACRAccreditation/Documents/MRI/LargePhantomGuidance.pdf):

- **Geometric accuracy** (slice 5): inside diameter of the phantom (190 mm) measured horizontally, vertically
  and on both diagonals, edges at half the signal step; ``diameter_error_mm`` is the signed error of the
  worst direction.
- **Slice thickness** (slice 1): two crossed ramps of slope 1:10 image as bars of length ``10 T``;
  ``T = 0.2 * (top * bottom) / (top + bottom)``, which cancels a tilt of the slice.
- **Percent integral uniformity** (slice 7): a 200 cm^2 ROI; the highest and lowest means of a 1 cm^2 ROI
  inside it; ``PIU = 100 * (1 - (high - low) / (high + low))``.
- **Percent signal ghosting** (slice 7): four ~10 cm^2 elliptical ROIs (4:1) between the phantom and the
  edge of the field of view; ``|((top + bottom) - (left + right)) / (2 * large ROI)| * 100``, with each
  background ROI's magnitude noise floor removed (see :func:`uniformity_ghosting_snr`).
- **SNR** (not an ACR criterion): large-ROI mean over the noise SD estimated from the left and right
  background ROIs with the Rayleigh correction 0.655 (NEMA MS 1-2008, single-image method; Kaufman L et al.,
  Radiology 1989;173:265-267, https://doi.org/10.1148/radiology.173.1.2781018). The background ROIs lie along
  the frequency-encoding direction so phase-encode ghosts do not inflate the noise.

Phase encoding is assumed along the image rows (top-bottom), as in the ACR's axial series. The layout of
the slice-thickness insert is :data:`ACR_MR`, that of scanqc's synthetic phantom (``scanqc.datasets.phantoms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.measure import Measurement
from scanqc.measure.roi import disc_mask, edge_to_edge, ellipse_mask, find_object, roi_dict, sample_line, stats
from scanqc.volume import Volume

LARGE_ROI_AREA_MM2 = 20000.0  # ACR: 200 cm^2 (195-205 accepted)
SMALL_ROI_AREA_MM2 = 100.0  # ACR: 1 cm^2
GHOST_ROI_AREA_MM2 = 1000.0  # ACR: ~10 cm^2 ellipses, length:width 4:1
RAYLEIGH_SD_FACTOR = 0.655  # SD of magnitude noise in air / SD of the underlying Gaussian noise


@dataclass(frozen=True)
class AcrMrGeometry:
    inside_diameter_mm: float = 190.0
    inside_length_mm: float = 148.0
    n_slices: int = 11  # ACR axial series: 11 slices, 5 mm thick, 5 mm gap
    block_halfwidth_mm: float = 50.0  # slice-thickness insert (dark block) half-width along x
    block_halfheight_mm: float = 8.0
    ramp_rows_mm: tuple[tuple[float, float], tuple[float, float]] = ((-4.5, -0.5), (0.5, 4.5))  # top, bottom
    ramp_slope: float = 0.1  # ramps rise 1 mm per 10 mm


ACR_MR = AcrMrGeometry()
ACR_SLICE = {"slice_thickness": 0, "geometry": 4, "uniformity": 6}  # slices 1, 5 and 7 (0-based)


def _pixel_mm(spacing: tuple[float, float, float]) -> float:
    dy, dx = spacing[1], spacing[2]
    if abs(dy - dx) > 1e-3 * max(dy, dx):
        raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"phantom analysis needs square pixels, got {dy} x {dx} mm")
    return dx


def _threshold(img: np.ndarray) -> float:
    return 0.4 * float(np.percentile(img, 99.5))


def geometric_accuracy(img: np.ndarray, pixel_mm: float, slice_index: int,
                       nominal_mm: float = ACR_MR.inside_diameter_mm) -> Measurement:
    cy, cx, r_obj = find_object(img, _threshold(img))
    inside = float(np.median(img[disc_mask(img.shape, cy, cx, 0.8 * r_obj)]))
    outside = float(np.median(img[~disc_mask(img.shape, cy, cx, 1.1 * r_obj)]))
    half_len = 1.15 * r_obj
    diam = {}
    for name, deg in (("horizontal", 0), ("vertical", 90), ("diagonal_45", 45), ("diagonal_135", 135)):
        step = 0.25
        prof = sample_line(img, cy, cx, math.radians(deg), half_len, step)
        diam[name] = edge_to_edge(prof, step * pixel_mm, inside, outside)
    worst = max(diam, key=lambda k: abs(diam[k] - nominal_mm))
    return Measurement("diameter_error_mm", diam[worst] - nominal_mm, "mm",
                       {"shape": "lines", "slice": int(slice_index), "center_px": [round(cy, 2), round(cx, 2)],
                        "nominal_mm": nominal_mm, "diameters_mm": {k: round(v, 2) for k, v in diam.items()},
                        "worst": worst})


def _ghost_rois(shape: tuple[int, int], cy: float, cx: float, r_obj: float,
                pixel_mm: float) -> dict[str, np.ndarray]:
    """Elliptical ROIs (long axis parallel to the phantom edge) midway between the phantom and the FOV edge."""
    b = math.sqrt(GHOST_ROI_AREA_MM2 / (4 * math.pi)) / pixel_mm  # semi-minor, pixels
    gaps = {"top": cy - r_obj, "bottom": shape[0] - 1 - cy - r_obj, "left": cx - r_obj,
            "right": shape[1] - 1 - cx - r_obj}
    small = min(gaps.values())
    if small < 4:
        raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"the field of view leaves {small * pixel_mm:.0f} mm of "
                                                       "background beside the phantom; ghosting needs ~10 mm")
    b = min(b, (small - 2) / 2)
    a = min(GHOST_ROI_AREA_MM2 / (math.pi * b * pixel_mm**2), 0.8 * r_obj)
    out = {}
    for name, g in gaps.items():
        d = r_obj + g / 2
        if name in ("top", "bottom"):
            out[name] = ellipse_mask(shape, cy + (d if name == "bottom" else -d), cx, b, a)
        else:
            out[name] = ellipse_mask(shape, cy, cx + (d if name == "right" else -d), a, b)
    return out


def uniformity_ghosting_snr(img: np.ndarray, pixel_mm: float, slice_index: int) -> list[Measurement]:
    cy, cx, r_obj = find_object(img, _threshold(img))
    r_large = math.sqrt(LARGE_ROI_AREA_MM2 / math.pi) / pixel_mm
    r_small = math.sqrt(SMALL_ROI_AREA_MM2 / math.pi) / pixel_mm
    if r_large > r_obj:
        raise ScanQCError(ErrorCode.USAGE, f"phantom radius {r_obj * pixel_mm:.0f} mm is smaller than the 200 cm^2 "
                                           "uniformity ROI; is this the ACR Large phantom?")
    large = disc_mask(img.shape, cy, cx, r_large)
    s_large, _ = stats(img, large, "large ROI")
    k = math.ceil(r_small)
    kernel = disc_mask((2 * k + 1, 2 * k + 1), k, k, r_small).astype(np.float64)
    local = ndimage.convolve(img.astype(np.float64), kernel / kernel.sum(), mode="nearest")
    centres = disc_mask(img.shape, cy, cx, r_large - r_small)
    high, low = float(local[centres].max()), float(local[centres].min())
    piu = 100.0 * (1.0 - (high - low) / (high + low))
    hy, hx = np.unravel_index(np.argmax(np.where(centres, local, -np.inf)), img.shape)
    ly, lx = np.unravel_index(np.argmin(np.where(centres, local, np.inf)), img.shape)
    rois = _ghost_rois(img.shape, cy, cx, r_obj, pixel_mm)
    for n, m in rois.items():
        stats(img, m, f"{n} ghost ROI")  # raises if an ROI left the image
    bg = img[rois["left"] | rois["right"]].astype(np.float64)
    sigma = float(bg.std(ddof=1)) / RAYLEIGH_SD_FACTOR
    # Magnitude images add a noise floor that is not additive (a ghost of 3 sigma reads ~1.05x, air reads
    # 1.25 sigma), so the ACR ratio of plain means under-reads faint ghosts. Each ROI's signal is taken as
    # sqrt(mean(M^2) - 2 sigma^2) (Rician second moment; Gudbjartsson & Patz, MRM 1995;34:910-914,
    # https://doi.org/10.1002/mrm.1910340618); with SNR >> 1 this is the ACR formula.
    floor = 2 * sigma**2
    means = {n: math.sqrt(max(float(np.mean(img[m].astype(np.float64) ** 2)) - floor, 0.0)) for n, m in rois.items()}
    ghost = abs((means["top"] + means["bottom"]) - (means["left"] + means["right"])) / (2 * s_large) * 100.0
    roi = roi_dict(slice_index, cy, cx, r_large * pixel_mm)
    return [
        Measurement("piu_pct", piu, "%", {**roi, "high": round(high, 3), "low": round(low, 3),
                                           "high_px": [int(hy), int(hx)], "low_px": [int(ly), int(lx)],
                                           "small_roi_mm2": SMALL_ROI_AREA_MM2}),
        Measurement("ghosting_pct", ghost, "%", {**roi, "background_means": {n: round(v, 3) for n, v in means.items()},
                                                 "large_roi_mean": round(s_large, 3)}),
        Measurement("snr", s_large / max(sigma, 1e-9), "1", {**roi, "noise_sd": round(sigma, 4),
                                                             "noise_from": "left+right background ROIs"}),
    ]


def ramp_thickness(img: np.ndarray, pixel_mm: float, slice_index: int,
                   geometry: AcrMrGeometry = ACR_MR) -> Measurement:
    cy, cx, _ = find_object(img, _threshold(img))
    half = int((geometry.block_halfwidth_mm - 2.0) / pixel_mm)
    c0, c1 = max(round(cx) - half, 0), min(round(cx) + half + 1, img.shape[1])
    lengths = []
    for lo, hi in geometry.ramp_rows_mm:
        rows = [r for r in range(img.shape[0]) if lo + 0.5 * pixel_mm <= (r - cy) * pixel_mm <= hi - 0.5 * pixel_mm]
        if not rows:
            raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"pixels of {pixel_mm} mm are too coarse for the ramps")
        prof = img[rows, c0:c1].mean(axis=0)
        lengths.append(edge_to_edge(prof, pixel_mm, float(np.percentile(prof, 90)), float(np.percentile(prof, 5))))
    top, bottom = lengths
    t = 2 * geometry.ramp_slope * top * bottom / max(top + bottom, 1e-9)
    return Measurement("slice_thickness_mm", t, "mm",
                       {"shape": "lines", "slice": int(slice_index), "cols_px": [c0, c1 - 1],
                        "top_mm": round(top, 3), "bottom_mm": round(bottom, 3)})


def measure_uniform(vol: Volume) -> list[Measurement]:
    """Uniform cylinder: PIU, ghosting, SNR and geometric accuracy on the middle slice."""
    px = _pixel_mm(vol.spacing)
    k = vol.shape[0] // 2
    return [*uniformity_ghosting_snr(vol.array[k], px, k), geometric_accuracy(vol.array[k], px, k)]


def measure_acr_mr(vol: Volume, geometry: AcrMrGeometry = ACR_MR) -> list[Measurement]:
    """ACR-like axial series (11 slices): slice thickness (1), geometric accuracy (5), PIU/ghosting/SNR (7)."""
    array = vol.array
    if array.shape[0] != geometry.n_slices:
        raise ScanQCError(ErrorCode.USAGE, f"an ACR MR axial series has {geometry.n_slices} slices, this one "
                                           f"{array.shape[0]}")
    px = _pixel_mm(vol.spacing)
    s = ACR_SLICE
    return [ramp_thickness(array[s["slice_thickness"]], px, s["slice_thickness"], geometry),
            geometric_accuracy(array[s["geometry"]], px, s["geometry"]),
            *uniformity_ghosting_snr(array[s["uniformity"]], px, s["uniformity"])]
