"""Procedural abdominal CT phantom with per-phase contrast enhancement (pure numpy/scipy).

No real 3D CT ships in any installable package, so contrast-phase and coverage models learn from
this phantom: body wall (skin-fat-muscle), visceral fat, lung bases above the liver dome, heart,
liver (right + left lobe), spleen, kidneys (cortex, medulla, collecting system), aorta, IVC, portal
vein, psoas and paraspinal muscles, vertebral column (cortex, cancellous bone, canal, posterior
elements, discs) and bowel loops with gas. Anatomy, organ sizes and positions, body habitus,
noise and slice thickness are randomised; the volume is built in mm, so spacing is free.

HU values per structure per phase (:data:`HU_TABLE`) are common textbook ranges, tabulated with their
sources in docs/hu-reference.md, from:

- Bae KT. Intravenous contrast medium administration and scan timing at CT: considerations and
  approaches. Radiology 2010;256(1):32-61 (aortic and hepatic enhancement curves by phase).
- Foley WD, Mallisee TA, Hohenwalter MD, et al. Multiphase hepatic CT with a multirow detector CT
  scanner. AJR 2000;175:679-685 (liver, portal vein, spleen by phase).
- Yuh BI, Cohan RH. Different phases of renal enhancement: role in detecting and characterizing
  renal masses during helical CT. AJR 1999;173:747-755 (corticomedullary / nephrographic /
  excretory phases).
- Non-enhancing tissue (fat -120..-80, lung -900..-800, cortical bone, CSF): standard CT
  references, e.g. Hofer M, *CT Teaching Manual*, 4th ed., Thieme 2010.

Coordinates: phantom mm with x to the patient's left, y posterior, z superior (LPS), body axis
through x = y = 0 and z = 0 at the top of the liver (the dome). The returned volume is canonical
(slice 0 inferior) with a randomised table position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scanqc.datasets.noise import apply_ct_noise
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

Phase = Literal["non_contrast", "arterial", "portal_venous", "delayed"]
PHASES: tuple[str, ...] = ("non_contrast", "arterial", "portal_venous", "delayed")
ENHANCEMENTS = ("optimal", "suboptimal")
SUBOPTIMAL_KINDS = ("weak_bolus", "mistimed_early")

# Label codes of the returned label map.
LABELS: dict[str, int] = {
    "air": 0, "subcutaneous_fat": 1, "muscle": 2, "visceral_fat": 3, "lung": 4, "heart": 5, "liver": 6,
    "spleen": 7, "kidney_cortex": 8, "kidney_medulla": 9, "collecting_system": 10, "aorta": 11, "ivc": 12,
    "portal_vein": 13, "bone_cortical": 14, "bone_cancellous": 15, "spinal_canal": 16, "disc": 17,
    "bowel_content": 18, "bowel_gas": 19,
}
KIDNEY_CODES = (LABELS["kidney_cortex"], LABELS["kidney_medulla"], LABELS["collecting_system"])

# HU (low, high) per structure and phase: non_contrast, late arterial (~35 s), portal venous
# (~70 s), delayed (3-5 min). Sources in the module docstring; the rows for aorta .. collecting
# system are the table in docs/hu-reference.md. Delayed collecting system: excretion has started
# in the 3-5 min delayed scans this phantom represents (excretory phase proper is 5-10 min).
HU_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "aorta": {"non_contrast": (35, 50), "arterial": (250, 400), "portal_venous": (150, 200), "delayed": (90, 130)},
    "portal_vein": {"non_contrast": (35, 50), "arterial": (100, 160), "portal_venous": (160, 200),
                    "delayed": (100, 130)},
    "ivc": {"non_contrast": (35, 50), "arterial": (50, 90), "portal_venous": (120, 160), "delayed": (100, 130)},
    "liver": {"non_contrast": (50, 65), "arterial": (65, 85), "portal_venous": (100, 130), "delayed": (85, 105)},
    "spleen": {"non_contrast": (40, 50), "arterial": (90, 140), "portal_venous": (110, 130), "delayed": (90, 110)},
    "kidney_cortex": {"non_contrast": (30, 40), "arterial": (150, 200), "portal_venous": (150, 180),
                      "delayed": (100, 150)},
    "kidney_medulla": {"non_contrast": (30, 40), "arterial": (60, 90), "portal_venous": (140, 170),
                       "delayed": (110, 150)},
    "collecting_system": {"non_contrast": (0, 15), "arterial": (0, 15), "portal_venous": (0, 20),
                          "delayed": (200, 400)},
    # Heart blood pool: mixed venous return and left-ventricular blood, between IVC and aorta.
    "heart": {"non_contrast": (35, 50), "arterial": (180, 300), "portal_venous": (140, 180), "delayed": (95, 130)},
    # Skeletal muscle enhances slightly (Bae 2010).
    "muscle": {"non_contrast": (40, 55), "arterial": (50, 65), "portal_venous": (55, 70), "delayed": (50, 65)},
}
CONSTANT_HU: dict[str, tuple[float, float]] = {
    "air": (-1000, -1000), "subcutaneous_fat": (-120, -80), "visceral_fat": (-120, -80), "lung": (-900, -800),
    "bone_cortical": (700, 1100), "bone_cancellous": (150, 300), "spinal_canal": (0, 20), "disc": (70, 100),
    "bowel_content": (10, 30), "bowel_gas": (-1000, -950),
}

# Disjoint anatomy ranges so a held-out set never shares organ sizes / habitus with training.
VARIANT_RANGES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "train": {"organ_scale": [(0.85, 1.15)], "body_scale": [(0.9, 1.1)], "noise_hu": [(8.0, 18.0)]},
    "test": {"organ_scale": [(0.72, 0.85), (1.15, 1.28)], "body_scale": [(0.8, 0.9), (1.1, 1.2)],
             "noise_hu": [(12.0, 22.0)]},
}
SLICE_THICKNESSES = (2.0, 2.5, 3.0, 4.0, 5.0)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ScanQCError(ErrorCode.USAGE, f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _uniform_ranges(rng: np.random.Generator, ranges: list[tuple[float, float]]) -> float:
    lo, hi = ranges[int(rng.integers(len(ranges)))]
    return float(rng.uniform(lo, hi))


def phase_hu(rng: np.random.Generator, phase: str, enhancement: str = "optimal",
             suboptimal_kind: str | None = None) -> tuple[dict[str, float], dict]:
    """Mean HU per structure for one scan, and how a suboptimal one was made.

    Suboptimal enhancement ("warn" cases) comes in two kinds:

    - ``weak_bolus``: every enhancing structure gets only ``f`` in [0.3, 0.5] of its enhancement
      above the non-contrast value (low iodine dose/flow, extravasation, high cardiac output);
    - ``mistimed_early``: scanned before the intended phase (arterial scanned while the bolus is
      still arriving: ``w`` in [0.3, 0.55] of the way from non-contrast; portal venous scanned
      in the late arterial phase: ``w`` in [0.1, 0.33] of the way from arterial).

    The ranges are chosen so that a portal-venous liver stays below 100 HU and an arterial aorta
    below 250 HU, the thresholds in docs/hu-reference.md.
    """
    _check_choice("phase", phase, PHASES)
    _check_choice("enhancement", enhancement, ENHANCEMENTS)
    # One draw per structure and phase; a scan's phases share a patient-specific position in the
    # ranges (u), so e.g. a strong enhancer is strong in every phase.
    u = {k: float(rng.uniform()) for k in HU_TABLE}
    table = {k: {p: lo + u[k] * (hi - lo) for p, (lo, hi) in v.items()} for k, v in HU_TABLE.items()}
    hu = {k: v[phase] for k, v in table.items()}
    for k, (lo, hi) in CONSTANT_HU.items():
        hu[k] = float(rng.uniform(lo, hi))
    meta: dict = {}
    if enhancement == "suboptimal":
        if phase == "non_contrast":
            raise ScanQCError(ErrorCode.USAGE, "suboptimal enhancement needs a contrast phase, got 'non_contrast'")
        kinds = SUBOPTIMAL_KINDS if phase in ("arterial", "portal_venous") else ("weak_bolus",)
        kind = suboptimal_kind or kinds[int(rng.integers(len(kinds)))]
        _check_choice("suboptimal_kind", kind, kinds)
        if kind == "weak_bolus":
            f = float(rng.uniform(0.3, 0.5))
            hu.update({k: v["non_contrast"] + f * (v[phase] - v["non_contrast"]) for k, v in table.items()})
            meta = {"kind": kind, "fraction": round(f, 3)}
        else:
            start, w = ("non_contrast", float(rng.uniform(0.3, 0.55))) if phase == "arterial" else \
                ("arterial", float(rng.uniform(0.1, 0.33)))
            hu.update({k: v[start] + w * (v[phase] - v[start]) for k, v in table.items()})
            meta = {"kind": kind, "from_phase": start, "fraction": round(w, 3)}
    return {k: round(v, 1) for k, v in hu.items()}, meta


@dataclass
class _Grid:
    x: np.ndarray  # (nx,) mm
    y: np.ndarray  # (ny,) mm
    z: np.ndarray  # (nz,) mm

    def box(self, centre: np.ndarray, semi: np.ndarray) -> tuple[slice, slice, slice]:
        out = []
        for axis, c, s in ((self.z, centre[2], semi[2]), (self.y, centre[1], semi[1]), (self.x, centre[0], semi[0])):
            lo, hi = np.searchsorted(axis, [c - s, c + s])
            out.append(slice(int(lo), int(hi)))
        return tuple(out)  # type: ignore[return-value]

    def ellipsoid(self, centre, semi) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        centre, semi = np.asarray(centre, float), np.asarray(semi, float)
        b = self.box(centre, semi)
        z = ((self.z[b[0]] - centre[2]) / semi[2])[:, None, None]
        y = ((self.y[b[1]] - centre[1]) / semi[1])[None, :, None]
        x = ((self.x[b[2]] - centre[0]) / semi[0])[None, None, :]
        return b, (x**2 + y**2 + z**2) <= 1.0

    def cylinder(self, centre_xy, radius, z_range, semi_y=None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        cx, cy = centre_xy
        ry = semi_y or radius
        b = self.box(np.array([cx, cy, (z_range[0] + z_range[1]) / 2]),
                     np.array([radius, ry, (z_range[1] - z_range[0]) / 2]))
        y = ((self.y[b[1]] - cy) / ry)[:, None]
        x = ((self.x[b[2]] - cx) / radius)[None, :]
        disk = (x**2 + y**2) <= 1.0
        return b, np.broadcast_to(disk, (b[0].stop - b[0].start, *disk.shape))

    def tube(self, p0, p1, radius) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        lo, hi = np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius
        b = self.box((lo + hi) / 2, (hi - lo) / 2)
        z, y, x = self.z[b[0]][:, None, None], self.y[b[1]][None, :, None], self.x[b[2]][None, None, :]
        d = p1 - p0
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
        dist2 = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
        return b, dist2 <= radius**2


def _paint(labels: np.ndarray, code: int, region: tuple[tuple[slice, slice, slice], np.ndarray],
           within: np.ndarray | None = None) -> None:
    b, m = region
    if within is not None:
        m = m & within[b]
    labels[b][m] = code


def make_abdomen_phantom(rng: np.random.Generator, phase: str = "portal_venous", enhancement: str = "optimal",
                         spacing: tuple[float, float, float] | None = None, variant: str = "train",
                         noise_hu: float | None = None, suboptimal_kind: str | None = None,
                         margins_mm: tuple[float, float] | None = None,
                         fov_mm: float | None = None) -> tuple[Volume, np.ndarray, dict]:
    """Build one phantom scan: ``(Volume in HU, label map (uint8, :data:`LABELS`), info)``.

    ``spacing`` (z, y, x mm) defaults to a random slice thickness from :data:`SLICE_THICKNESSES`
    and 2-3 mm pixels; ``margins_mm`` = (above the liver dome, below the lower kidney poles),
    default U(30, 80) and U(20, 60); ``variant`` picks disjoint anatomy ranges
    (:data:`VARIANT_RANGES`). ``info`` holds the HU per structure, anatomy parameters and the
    world z of the liver dome and of the lowest kidney pole.
    """
    _check_choice("phase", phase, PHASES)
    _check_choice("enhancement", enhancement, ENHANCEMENTS)
    _check_choice("variant", variant, tuple(VARIANT_RANGES))
    ranges = VARIANT_RANGES[variant]
    hu, sub = phase_hu(rng, phase, enhancement, suboptimal_kind)
    if spacing is None:
        px = round(float(rng.uniform(2.0, 3.0)), 2)
        spacing = (float(rng.choice(SLICE_THICKNESSES)), px, px)
    sz, sy, sx = (float(s) for s in spacing)
    if min(sz, sy, sx) <= 0:
        raise ScanQCError(ErrorCode.USAGE, f"spacing must be positive, got {spacing!r}")

    # --- anatomy parameters (mm) ---
    sb = _uniform_ranges(rng, ranges["body_scale"])

    def organ_scale() -> np.ndarray:
        return _uniform_ranges(rng, ranges["organ_scale"]) * rng.uniform(0.95, 1.05, 3)

    def jitter(s: float = 8.0) -> np.ndarray:
        return rng.uniform(-s, s, 3)

    ax, ay = 160.0 * sb * rng.uniform(0.95, 1.05), 115.0 * sb * rng.uniform(0.92, 1.05)
    fat_t = float(rng.uniform(8, 35)) * sb
    muscle_t = float(rng.uniform(8, 14))
    liver_semi = np.array([68.0, 78.0, 75.0]) * organ_scale()
    liver_c = np.array([-52.0, -8.0, 0.0]) + jitter() * [1, 1, 0]
    liver_c[2] = -liver_semi[2]  # dome (top of the right lobe) at z = 0
    left_lobe_semi = np.array([55.0, 38.0, 32.0]) * organ_scale()
    left_lobe_c = np.array([20.0, -38.0, -40.0]) + jitter()
    spleen_semi = np.array([32.0, 52.0, 48.0]) * organ_scale()
    spleen_c = np.array([88.0, 42.0, -50.0]) + jitter()
    kid_scale = organ_scale()
    kid_semi = np.array([28.0, 26.0, 55.0]) * kid_scale
    r_kid_c = np.array([-72.0, 42.0, -liver_semi[2] * 2 + 15]) + jitter(10)
    l_kid_c = np.array([72.0, 42.0, r_kid_c[2] + 18]) + jitter(10)
    kidney_bottom = float(min(r_kid_c[2], l_kid_c[2]) - kid_semi[2])
    m_top, m_bottom = margins_mm or (float(rng.uniform(30, 80)), float(rng.uniform(20, 60)))
    z_top, z_bottom = float(m_top), kidney_bottom - float(m_bottom)
    fov = float(fov_mm or 2 * max(ax, ay) + rng.uniform(20, 70))

    # --- grid: voxel centres in phantom mm ---
    nz = max(int(np.ceil((z_top - z_bottom) / sz)), 1)
    ny, nx = max(round(fov / sy), 8), max(round(fov / sx), 8)
    grid = _Grid(x=(np.arange(nx) - (nx - 1) / 2) * sx, y=(np.arange(ny) - (ny - 1) / 2) * sy + 5.0,
                 z=z_bottom + (np.arange(nz) + 0.5) * sz)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    yy, xx = grid.y[:, None], grid.x[None, :]

    def ellipse2d(a: float, b: float) -> np.ndarray:
        return (xx / a) ** 2 + (yy / b) ** 2 <= 1

    body2d = ellipse2d(ax, ay)
    inner_fat = ellipse2d(ax - fat_t, ay - fat_t * 0.8)
    cavity2d = ellipse2d(ax - fat_t - muscle_t, ay - fat_t * 0.8 - muscle_t)
    labels[:, body2d] = LABELS["subcutaneous_fat"]
    labels[:, inner_fat] = LABELS["muscle"]
    labels[:, cavity2d] = LABELS["visceral_fat"]
    cavity = np.broadcast_to(cavity2d, labels.shape)

    # Bowel loops (lower/anterior abdomen), some with gas.
    for _ in range(int(rng.integers(4, 9))):
        c = np.array([rng.uniform(-70, 70), rng.uniform(-80, -20), rng.uniform(kidney_bottom - 20, -90)])
        semi = rng.uniform(12, 24, 3)
        _paint(labels, LABELS["bowel_content"], grid.ellipsoid(c, semi), cavity)
        if rng.uniform() < 0.6:
            _paint(labels, LABELS["bowel_gas"], grid.ellipsoid(c - [0, semi[1] * 0.4, 0], semi * 0.5), cavity)

    # Solid organs (painted on a scratch map first to find the diaphragm under the lungs).
    organs = np.zeros_like(labels)
    _paint(organs, LABELS["liver"], grid.ellipsoid(liver_c, liver_semi), cavity)
    _paint(organs, LABELS["liver"], grid.ellipsoid(left_lobe_c, left_lobe_semi), cavity)
    _paint(organs, LABELS["spleen"], grid.ellipsoid(spleen_c, spleen_semi), cavity)
    heart_semi = np.array([62.0, 48.0, 45.0]) * organ_scale()
    heart_c = np.array([15.0, -25.0, heart_semi[2] + 5.0]) + jitter(6) * [1, 1, 0]
    heart = np.zeros(labels.shape, dtype=bool)
    b, m = grid.ellipsoid(heart_c, heart_semi)
    heart[b] = m & cavity[b]

    # Lungs: cavity above the diaphragm. Over the liver and spleen the diaphragm follows the organ
    # top (+4 mm of muscle); elsewhere it is a dome per side, falling off laterally and posteriorly.
    has_organ = organs.any(0)
    top_idx = organs.shape[0] - 1 - np.argmax(organs[::-1] > 0, axis=0)
    top_of = np.where(has_organ, grid.z[top_idx], -np.inf)
    floor_r = 4.0 - 0.006 * ((xx - liver_c[0]) ** 2 + (yy - liver_c[1]) ** 2)
    floor_l = -12.0 - 0.006 * ((xx - 60.0) ** 2 + (yy - 10.0) ** 2)
    floor = np.where(xx < 0, floor_r, floor_l)
    floor = np.where(np.isfinite(top_of), np.maximum(floor, top_of + 4.0), floor)
    mediastinum = (np.abs(xx - 5) < 28) & (yy > -60)
    lung2d_ok = cavity2d & ~mediastinum
    lung = (grid.z[:, None, None] > floor[None]) & lung2d_ok[None] & ~heart
    labels[lung] = LABELS["lung"]
    labels[heart] = LABELS["heart"]
    labels[organs > 0] = organs[organs > 0]

    # Kidneys: cortex shell, medullary core, collecting system at the (medial, anterior) hilum.
    for c, side in ((r_kid_c, -1), (l_kid_c, 1)):
        _paint(labels, LABELS["kidney_cortex"], grid.ellipsoid(c, kid_semi), cavity)
        _paint(labels, LABELS["kidney_medulla"], grid.ellipsoid(c, kid_semi * [0.68, 0.68, 0.8]), cavity)
        cs = c + np.array([-side * kid_semi[0] * 0.4, -kid_semi[1] * 0.2, 0.0])
        _paint(labels, LABELS["collecting_system"], grid.ellipsoid(cs, kid_semi * [0.35, 0.3, 0.45]), cavity)

    # Vessels.
    z_lo, z_hi = grid.z[0] - sz, grid.z[-1] + sz
    aorta_r = float(rng.uniform(9, 13))
    _paint(labels, LABELS["aorta"], grid.cylinder((12.0 + rng.uniform(-4, 4), 8.0), aorta_r, (z_lo, min(z_hi, 0.0))))
    _paint(labels, LABELS["ivc"], grid.cylinder((-24.0 + rng.uniform(-4, 4), 10.0), float(rng.uniform(9, 12)),
                                                (z_lo, -10.0), semi_y=float(rng.uniform(7, 10))))
    pv0 = np.array([2.0, -12.0, -liver_semi[2] * 1.45])
    pv1 = liver_c + np.array([10.0, 0.0, 0.0])
    _paint(labels, LABELS["portal_vein"], grid.tube(pv0, pv1, float(rng.uniform(6, 8))))

    # Muscles around the spine: psoas (grows caudally, below the kidneys' upper poles) and erector spinae.
    for side in (-1, 1):
        _paint(labels, LABELS["muscle"], grid.cylinder((side * 42.0, 82.0), 28.0, (z_lo, z_hi), semi_y=22.0),
               cavity | np.broadcast_to(inner_fat, labels.shape))
        _paint(labels, LABELS["muscle"], grid.tube((side * 25.0, 40.0, -liver_semi[2] * 1.4),
                                                   (side * 45.0, 30.0, z_lo), 16.0))

    # Spine: vertebral bodies (cancellous core, cortical shell) separated by discs every ~30 mm.
    spine_c = (0.0, 40.0)
    _paint(labels, LABELS["bone_cortical"], grid.cylinder(spine_c, 21.0, (z_lo, z_hi), semi_y=18.0))
    _paint(labels, LABELS["bone_cancellous"], grid.cylinder(spine_c, 18.0, (z_lo, z_hi), semi_y=15.0))
    level = float(rng.uniform(0, 30))
    disc_rows = (np.mod(grid.z - level, 30.0) < 6.0)
    d_region = grid.cylinder(spine_c, 21.0, (z_lo, z_hi), semi_y=18.0)
    b, m = d_region
    m = m & disc_rows[b[0]][:, None, None]
    labels[b][m] = LABELS["disc"]
    _paint(labels, LABELS["bone_cortical"], grid.cylinder((0.0, 78.0), 16.0, (z_lo, z_hi), semi_y=20.0))
    _paint(labels, LABELS["spinal_canal"], grid.cylinder((0.0, 70.0), 9.0, (z_lo, z_hi), semi_y=8.0))

    # --- intensities ---
    lut = np.zeros(256, dtype=np.float32)
    for name, code in LABELS.items():
        lut[code] = hu[name]
    img = lut[labels]
    if phase == "arterial":
        # Arciform / heterogeneous splenic enhancement in the arterial phase: zero-mean smooth texture.
        tex = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 2.0)
        tex *= 18.0 / max(float(tex.std()), 1e-6)
        sp = labels == LABELS["spleen"]
        img[sp] += tex[sp] - tex[sp].mean()
    # Partial volume: slice profile with FWHM = slice thickness along z, and the reconstruction
    # kernel's in-plane point-spread (~1.2 pixel FWHM).
    img = ndimage.gaussian_filter(img, (0.4247, 0.5, 0.5))
    noise = float(noise_hu if noise_hu is not None else _uniform_ranges(rng, ranges["noise_hu"]))
    img = apply_ct_noise(img, noise, rng)
    img = np.clip(img, -1024.0, 3071.0)

    table_z = float(rng.uniform(-400.0, 0.0))  # table position of the dome (phantom z = 0)
    origin = (float(grid.x[0]), float(grid.y[0]), float(grid.z[0] + table_z))
    vol = Volume(img.astype(np.float32), (sz, sy, sx), origin, modality="CT")
    info = {
        "generator": "ct_phantom.make_abdomen_phantom",
        "phase": phase, "enhancement": enhancement, "suboptimal": sub, "variant": variant,
        "hu": hu, "noise_hu": round(noise, 2), "spacing_mm": [sz, sy, sx], "shape": list(labels.shape),
        "body_scale": round(sb, 3), "body_semi_axes_mm": [round(ax, 1), round(ay, 1)],
        "subcutaneous_fat_mm": round(fat_t, 1),
        "liver_semi_mm": [round(v, 1) for v in liver_semi], "kidney_semi_mm": [round(v, 1) for v in kid_semi],
        "spleen_semi_mm": [round(v, 1) for v in spleen_semi],
        "margins_mm": [round(m_top, 1), round(m_bottom, 1)],
        "liver_dome_z_mm": round(table_z, 2), "kidney_bottom_z_mm": round(kidney_bottom + table_z, 2),
    }
    return vol, labels, info


def required_abdomen_mask(labels: np.ndarray) -> np.ndarray:
    """Anatomy an abdominal CT must cover (guideline 'liver_dome_to_kidneys'): liver and kidneys."""
    return (labels == LABELS["liver"]) | np.isin(labels, KIDNEY_CODES)
