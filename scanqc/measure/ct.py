"""CT phantom measurements: water cylinder and an ACR CT 464-like accreditation phantom.

Methods follow the ACR CT Accreditation Program phantom testing instructions (ACR, "CT Accreditation
Program Testing Instructions", revised 2017, https://accreditationsupport.acr.org/support/solutions/articles/11000056197):

- **CT number accuracy** (module 1): mean HU in a ~200 mm^2 ROI inside each material insert.
- **Uniformity and noise** (module 3, or the centre slice of a water cylinder): ~400 mm^2 ROIs at the
  centre and at 12, 3, 6 and 9 o'clock near the edge; uniformity = edge minus centre (the largest in
  magnitude, signed); noise = SD in the centre ROI.
- **Slice thickness** (module 1): an inclined ramp of angle ``theta`` to the scan plane images as a bar of
  length ``T / tan(theta)`` in-plane; ``T = FWHM * tan(theta)`` (the ACR counts visible wires of its 0.5 mm
  ramps; a continuous ramp as in the Catphan CTP404 module gives the same width without counting).
- **Low-contrast** (module 2): contrast-to-noise ratio of the 25 mm rod, ``|A - B| / SD_B`` (ACR 2017 criterion),
  averaged over the three slices nearest the module centre.

The phantom's layout (insert positions, ramp, rod) is :data:`ACR_CT`, the layout of scanqc's synthetic
ACR-like phantom (``scanqc.datasets.phantoms``); module length and diameter are the ACR 464's (4 modules of
4 cm, 20 cm diameter). Rotation of the phantom is not searched for: position it with the lasers. pylinac
(MIT) analyses the real ACR 464 but pins ``pydicom<3``, which conflicts with scanqc's ``pydicom>=3``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.measure import Measurement
from scanqc.measure.roi import disc_mask, find_object, fwhm, roi_dict, stats
from scanqc.volume import Volume

OBJECT_THRESHOLD_HU = -500.0  # phantom vs surrounding air
UNIFORMITY_ROI_AREA_MM2 = 400.0  # ACR: ~400 mm^2 centre and edge ROIs
EDGE_ROI_INSET_MM = 20.0  # edge ROI centres this far inside the phantom boundary
INSERT_ROI_AREA_MM2 = 200.0  # ACR: ~200 mm^2 inside each 25 mm insert
LOW_CONTRAST_ROI_AREA_MM2 = 100.0  # ACR: ~100 mm^2 in the 25 mm rod and beside it


@dataclass(frozen=True)
class AcrCtGeometry:
    """Layout of the ACR-like CT phantom; positions in mm from the axis, x along columns, y down the rows."""

    diameter_mm: float = 200.0
    module_length_mm: float = 40.0
    n_modules: int = 4
    insert_diameter_mm: float = 25.0
    inserts: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "bone": (42.4, -42.4), "polyethylene": (-42.4, -42.4), "air": (-42.4, 42.4), "acrylic": (42.4, 42.4),
        "water": (0.0, 60.0)})
    ramp_center_mm: tuple[float, float] = (0.0, -20.0)  # (x, y) of the ramp ribbon in module 1
    ramp_halfheight_mm: float = 1.0  # ribbon half-height along y
    ramp_tan: float = math.tan(math.radians(23.0))  # Catphan CTP404 ramps are 23 degrees
    ramp_search_mm: float = 35.0  # profile half-length along x
    rod_center_mm: tuple[float, float] = (0.0, -50.0)  # 25 mm low-contrast rod in module 2
    rod_diameter_mm: float = 25.0
    rod_background_mm: tuple[float, float] = (0.0, 0.0)  # background ROI for the CNR

    @property
    def length_mm(self) -> float:
        return self.module_length_mm * self.n_modules


ACR_CT = AcrCtGeometry()


def _r_px(area_mm2: float, pixel_mm: float) -> float:
    return math.sqrt(area_mm2 / math.pi) / pixel_mm


def _pixel_mm(vol: Volume) -> float:
    dy, dx = vol.spacing[1], vol.spacing[2]
    if abs(dy - dx) > 1e-3 * max(dy, dx):
        raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"phantom analysis needs square pixels, got {dy} x {dx} mm")
    return dx


def uniformity_and_noise(img: np.ndarray, pixel_mm: float, slice_index: int) -> list[Measurement]:
    """Centre-ROI mean (``water_hu``) and SD (``noise_hu``), and edge-minus-centre ``uniformity_hu``."""
    cy, cx, r_obj = find_object(img, OBJECT_THRESHOLD_HU)
    r_roi = _r_px(UNIFORMITY_ROI_AREA_MM2, pixel_mm)
    centre_mean, centre_sd = stats(img, disc_mask(img.shape, cy, cx, r_roi), "centre ROI")
    r_edge = r_obj - EDGE_ROI_INSET_MM / pixel_mm
    edges = {}
    for name, (dy, dx) in {"12": (-1, 0), "3": (0, 1), "6": (1, 0), "9": (0, -1)}.items():
        m, _ = stats(img, disc_mask(img.shape, cy + dy * r_edge, cx + dx * r_edge, r_roi), f"edge ROI {name}")
        edges[name] = m - centre_mean
    worst = max(edges, key=lambda k: abs(edges[k]))
    roi = roi_dict(slice_index, cy, cx, r_roi * pixel_mm)
    return [
        Measurement("water_hu", centre_mean, "[hnsf'U]", roi),
        Measurement("noise_hu", centre_sd, "[hnsf'U]", roi),
        Measurement("uniformity_hu", edges[worst], "[hnsf'U]",
                    {**roi, "edge": f"{worst} o'clock", "edge_minus_centre": {k: round(v, 2) for k, v in edges.items()},
                     "edge_offset_mm": round(r_edge * pixel_mm, 2)}),
    ]


def measure_water(vol: Volume) -> list[Measurement]:
    """Water cylinder: water HU, noise and uniformity on the slice through the middle of the phantom."""
    px = _pixel_mm(vol)
    k = _middle_slice(vol)
    return uniformity_and_noise(vol.array[k], px, k)


def _present(vol: Volume) -> np.ndarray:
    areas = np.array([(s > OBJECT_THRESHOLD_HU).sum() for s in vol.array], dtype=float)
    if areas.max() <= 0:
        raise ScanQCError(ErrorCode.USAGE, "no phantom in the series (no slice has anything above -500 HU)")
    return np.nonzero(areas >= 0.5 * areas.max())[0]


def _middle_slice(vol: Volume) -> int:
    p = _present(vol)
    return int(p[len(p) // 2])


def module_slices(vol: Volume, geometry: AcrCtGeometry = ACR_CT) -> list[int]:
    """Slice index nearest the centre of each module, from the phantom's extent along z.

    Both ends are used (start ~ first slice with phantom - dz/2; end ~ last + dz/2) and the estimates of
    the first module's start averaged, so the position error is at most half a slice increment.
    """
    p = _present(vol)
    dz = vol.spacing[0]
    first, last = int(p[0]), int(p[-1])
    extent = (last - first + 1) * dz
    if extent < 0.75 * geometry.length_mm:
        raise ScanQCError(ErrorCode.USAGE, f"the series covers {extent:.0f} mm of the phantom; an ACR CT analysis "
                                           f"needs all {geometry.n_modules} modules ({geometry.length_mm:.0f} mm)")
    start = ((first - 0.5) * dz + (last + 0.5) * dz - geometry.length_mm) / 2.0
    out = []
    for m in range(geometry.n_modules):
        z = start + (m + 0.5) * geometry.module_length_mm
        out.append(int(np.clip(round(z / dz), 0, vol.shape[0] - 1)))
    return out


def ramp_thickness(img: np.ndarray, pixel_mm: float, cy: float, cx: float, slice_index: int,
                   geometry: AcrCtGeometry = ACR_CT) -> Measurement:
    """Slice thickness from the inclined ramp: FWHM of the ramp's in-plane profile times tan(theta)."""
    rx, ry = geometry.ramp_center_mm
    y0 = cy + ry / pixel_mm
    rows = [r for r in range(img.shape[0])
            if abs(r - y0) * pixel_mm <= geometry.ramp_halfheight_mm - 0.5 * pixel_mm]
    if not rows:
        raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"pixels of {pixel_mm} mm are too coarse for the slice "
                                                       "thickness ramp")
    x0 = cx + rx / pixel_mm
    half = geometry.ramp_search_mm / pixel_mm
    c0, c1 = max(int(x0 - half), 0), min(int(x0 + half) + 1, img.shape[1])
    profile = img[rows, c0:c1].mean(axis=0)
    width = fwhm(profile, pixel_mm)
    return Measurement("slice_thickness_mm", width * geometry.ramp_tan, "mm",
                       {"shape": "line", "slice": int(slice_index), "rows_px": [rows[0], rows[-1]],
                        "cols_px": [c0, c1 - 1], "fwhm_mm": round(width, 3),
                        "ramp_angle_deg": round(math.degrees(math.atan(geometry.ramp_tan)), 2)})


def measure_acr_ct(vol: Volume, geometry: AcrCtGeometry = ACR_CT) -> list[Measurement]:
    """ACR-like phantom: insert HUs and slice thickness (module 1), low-contrast CNR (module 2), uniformity
    and noise (module 3). ``water_hu`` is the water insert of module 1, as in the ACR instructions."""
    px = _pixel_mm(vol)
    m1, m2, m3 = module_slices(vol, geometry)[:3]
    out: list[Measurement] = []
    img = vol.array[m1]
    cy, cx, _ = find_object(img, OBJECT_THRESHOLD_HU)
    r_ins = _r_px(INSERT_ROI_AREA_MM2, px)
    for name, (x, y) in geometry.inserts.items():
        iy, ix = cy + y / px, cx + x / px
        mean, _ = stats(img, disc_mask(img.shape, iy, ix, r_ins), f"{name} insert ROI")
        key = "water_hu" if name == "water" else f"insert_{name}_hu"
        out.append(Measurement(key, mean, "[hnsf'U]", roi_dict(m1, iy, ix, r_ins * px, module=1)))
    out.append(ramp_thickness(img, px, cy, cx, m1, geometry))
    # CNR of one 100 mm^2 ROI pair scatters by ~0.2 at 5 HU noise; the mean over the three slices nearest the
    # module centre (all inside the 40 mm module) halves that.
    r_lc = _r_px(LOW_CONTRAST_ROI_AREA_MM2, px)
    (ax, ay), (bx, by) = geometry.rod_center_mm, geometry.rod_background_mm
    cnrs, rods, bgs, sds = [], [], [], []
    for k in (m2 - 1, m2, m2 + 1):
        img = vol.array[k]
        cy, cx, _ = find_object(img, OBJECT_THRESHOLD_HU)
        a, _ = stats(img, disc_mask(img.shape, cy + ay / px, cx + ax / px, r_lc), "low-contrast rod ROI")
        b, sd_b = stats(img, disc_mask(img.shape, cy + by / px, cx + bx / px, r_lc), "low-contrast background ROI")
        cnrs.append(abs(a - b) / max(sd_b, 1e-6))
        rods.append(a)
        bgs.append(b)
        sds.append(sd_b)
    out.append(Measurement("low_contrast_cnr", float(np.mean(cnrs)), "1",
                           roi_dict(m2, cy + ay / px, cx + ax / px, r_lc * px, module=2, slices=[m2 - 1, m2, m2 + 1],
                                    rod_hu=round(float(np.mean(rods)), 2), background_hu=round(float(np.mean(bgs)), 2),
                                    background_sd=round(float(np.mean(sds)), 2))))
    out += [m for m in uniformity_and_noise(vol.array[m3], px, m3) if m.name != "water_hu"]
    return out
