"""Domain-randomised abdominal CT: label maps of random anatomy, HU from a continuous bolus-timing model.

The approach of SynthSeg (Billot et al., Medical Image Analysis 86:102789, 2023): sample an image from
a label map with every generation parameter that is not the label randomised, so a check built on it
cannot lean on one appearance. What is randomised:

- **Anatomy** (:func:`make_labels`): body habitus (super-ellipse cross-section, subcutaneous and visceral
  fat, muscle wall), lobulated and deformed organ shapes (liver with gallbladder, hepatic and portal
  veins and cysts; spleen; kidneys with cortex, medulla, renal sinus and collecting system, tilted,
  at independent heights; aorta with its bifurcation, IVC, portal and splenic veins), spine with
  discs and posterior elements, ribs, iliac wings, psoas and paraspinal muscles, colon and small
  bowel with gas / fluid / optional positive oral contrast, stomach, lung bases and heart above a
  two-dome diaphragm, arms by the side or above the head, the table under the patient. A smooth
  random displacement field deforms the whole map.
- **Contrast** (:func:`bolus_hu`): the mean HU of each structure is its native value plus
  ``k * E_s(t)``, where ``E_s`` is an enhancement curve through the textbook values per phase
  (docs/hu-reference.md), ``t`` a continuous time after
  injection (arterial 25-45 s, portal venous 58-100 s, delayed 150-480 s of physiological time) and
  ``k`` a patient-level enhancement scale (cardiac output, body size, iodine dose): 0.75-1.35 for an
  adequate bolus, 0.30-0.55 for a weak one (labelled ``suboptimal``). The nominal time after
  injection is ``t`` stretched by the circulation time (0.8-1.25).
- **Appearance** (:func:`render`): smooth intra-organ texture, in-plane point spread (kernel), slice
  profile (thickness 0.6-5 mm), correlated noise of 5-30 HU with random correlation length
  (smooth to sharp kernels), a scanner HU offset of up to +-6 HU, pixel size and FOV.

Coordinates: mm with x to the patient's left, y posterior, z superior (LPS), z = 0 at the liver dome.
The returned :class:`~scanqc.volume.Volume` is stored with slice 0 inferior (the default direction).
``variant="test"`` draws habitus, organ scale and noise from ranges outside the training ranges.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scanqc.datasets.ct_phantom import HU_TABLE as _PHANTOM_HU
from scanqc.datasets.ct_phantom import _check_choice as _check  # the phantom's argument check and range draw
from scanqc.datasets.ct_phantom import _uniform_ranges as _pick
from scipy import ndimage

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

PHASES: tuple[str, ...] = ("non_contrast", "arterial", "portal_venous", "delayed")

LABELS: dict[str, int] = {
    "air": 0, "subcutaneous_fat": 1, "muscle": 2, "visceral_fat": 3, "lung": 4, "heart": 5, "liver": 6,
    "spleen": 7, "kidney_cortex": 8, "kidney_medulla": 9, "collecting_system": 10, "aorta": 11, "ivc": 12,
    "portal_vein": 13, "bone_cortical": 14, "bone_cancellous": 15, "spinal_canal": 16, "disc": 17,
    "bowel_content": 18, "bowel_gas": 19, "gallbladder": 20, "table": 21, "liver_cyst": 22, "hepatic_vein": 23,
    "oral_contrast": 24,
}
KIDNEY_CODES = (LABELS["kidney_cortex"], LABELS["kidney_medulla"], LABELS["collecting_system"])
# Structures whose voxels count as "liver" for coverage (vessels and cysts inside the organ).
LIVER_CODES = (LABELS["liver"], LABELS["liver_cyst"], LABELS["hepatic_vein"])

# Textbook HU per phase (docs/hu-reference.md): (low, high) for non-contrast, late arterial (~35 s),
# portal venous (~70 s), delayed (3-5 min). Rows aorta .. collecting system: docs/hu-reference.md.
# One table: the shared rows (aorta .. collecting system) and the heart come from the phantom's HU_TABLE.
HU_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    **{k: v for k, v in _PHANTOM_HU.items() if k != "muscle"},
    # Not in the shared table (see docs/hu-reference.md): hepatic veins (unenhanced in the arterial phase, like
    # the IVC later).
    "hepatic_vein": {"non_contrast": (35, 50), "arterial": (45, 70), "portal_venous": (140, 180),
                     "delayed": (100, 130)},
    "muscle": {"non_contrast": (40, 55), "arterial": (50, 65), "portal_venous": (55, 70), "delayed": (50, 65)},
}
CONSTANT_HU: dict[str, tuple[float, float]] = {
    "air": (-1010, -990), "subcutaneous_fat": (-125, -75), "visceral_fat": (-125, -75), "lung": (-910, -760),
    "bone_cortical": (500, 1200), "bone_cancellous": (120, 300), "spinal_canal": (0, 25), "disc": (60, 110),
    "bowel_content": (-10, 35), "bowel_gas": (-1000, -900), "gallbladder": (0, 25), "table": (-350, 150),
    "liver_cyst": (0, 20), "oral_contrast": (150, 400),
}
# Physiological time after injection (s) per phase label; the gaps between them are not sampled, so a
# label is never a coin toss on the boundary.
PHASE_TIME_S: dict[str, tuple[float, float]] = {"arterial": (25.0, 45.0), "portal_venous": (58.0, 100.0),
                                                "delayed": (150.0, 480.0)}
ENHANCEMENT_SCALE: dict[str, tuple[float, float]] = {"optimal": (0.75, 1.35), "suboptimal": (0.30, 0.55)}
SLICE_THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)

VARIANT_RANGES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "train": {"body_scale": [(0.85, 1.15)], "organ_scale": [(0.85, 1.15)], "noise_hu": [(5.0, 25.0)]},
    "test": {"body_scale": [(0.75, 0.85), (1.15, 1.3)], "organ_scale": [(0.75, 0.85), (1.15, 1.25)],
             "noise_hu": [(8.0, 30.0)]},
}


# ----------------------------------------------------------------------------- contrast timing
def _mid(r: tuple[float, float]) -> float:
    return (r[0] + r[1]) / 2.0


def enhancement_curve(structure: str) -> tuple[np.ndarray, np.ndarray]:
    """(times s, HU above native) anchors of a structure's enhancement for a nominal bolus (k = 1).

    The anchors at 35, 70 and 240 s are the table's phase mid-points; the early (15 s), the 120 s and the
    late (600 s) anchors shape the curve between them (aortic peak at ~30 s, washout, excretion from ~2 min).
    """
    row = HU_TABLE[structure]
    n = _mid(row["non_contrast"])
    art, pv, de = (_mid(row[p]) - n for p in ("arterial", "portal_venous", "delayed"))
    if structure == "collecting_system":
        return np.array([0, 120, 170, 240, 600.0]), np.array([0, 2, 60, de, de * 1.3])
    early = {"aorta": 0.45, "heart": 0.6, "kidney_cortex": 0.4, "spleen": 0.3}.get(structure, 0.05)
    return (np.array([0, 10, 15, 35, 70, 120, 240, 600.0]),
            np.array([0, 0, early * art, art, pv, (pv + de) / 2, de, de * 0.7]))


def bolus_hu(rng: np.random.Generator, phase: str, enhancement: str = "optimal",
             time_s: float | None = None, scale: float | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean HU per structure for one scan and the timing parameters that made it.

    Native values and each structure's position within its textbook range are drawn per patient; a
    contrast phase adds ``scale * E_s(time_s)`` (:func:`enhancement_curve`).
    """
    _check("phase", phase, PHASES)
    _check("enhancement", enhancement, tuple(ENHANCEMENT_SCALE))
    if phase == "non_contrast" and enhancement != "optimal":
        raise ScanQCError(ErrorCode.USAGE, "suboptimal enhancement needs a contrast phase, got 'non_contrast'")
    hu: dict[str, float] = {}
    t = 0.0 if phase == "non_contrast" else float(time_s if time_s is not None else rng.uniform(*PHASE_TIME_S[phase]))
    k = 0.0 if phase == "non_contrast" else float(scale if scale is not None
                                                    else rng.uniform(*ENHANCEMENT_SCALE[enhancement]))
    for s, row in HU_TABLE.items():
        native = float(rng.uniform(*row["non_contrast"]))
        times, values = enhancement_curve(s)
        e = float(np.interp(t, times, values))
        # Where in its range this patient's structure sits (+-25 % of the phase range's width).
        width = (row[phase][1] - row[phase][0]) if phase != "non_contrast" else 0.0
        e += float(rng.uniform(-0.25, 0.25)) * width
        hu[s] = native + k * max(e, 0.0)
    for s, r in CONSTANT_HU.items():
        hu[s] = float(rng.uniform(*r))
    stretch = float(rng.uniform(0.8, 1.25))
    meta = {"time_after_injection_s": round(t * stretch, 1), "physiological_time_s": round(t, 1),
            "circulation_stretch": round(stretch, 3), "enhancement_scale": round(k, 3)}
    return {k_: round(v, 1) for k_, v in hu.items()}, meta


def hu_bounds(structure: str, phase: str, enhancement: str = "optimal") -> tuple[float, float]:
    """The range :func:`bolus_hu` can give a structure in a phase (for tests and docs)."""
    row = HU_TABLE[structure]
    lo_n, hi_n = row["non_contrast"]
    if phase == "non_contrast":
        return lo_n, hi_n
    times, values = enhancement_curve(structure)
    t_lo, t_hi = PHASE_TIME_S[phase]
    ts = np.linspace(t_lo, t_hi, 200)
    e = np.interp(ts, times, values)
    width = row[phase][1] - row[phase][0]
    k_lo, k_hi = ENHANCEMENT_SCALE[enhancement]
    e_lo, e_hi = max(float(e.min()) - 0.25 * width, 0.0), float(e.max()) + 0.25 * width
    return lo_n + k_lo * e_lo, hi_n + k_hi * e_hi


# ----------------------------------------------------------------------------- shapes
@dataclass
class _Grid:
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        out = []
        for axis, a, b in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            i, j = np.searchsorted(axis, [a, b])
            if j <= i:
                return None
            out.append(slice(int(i), int(j)))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, b: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[b[2]][None, None, :], self.y[b[1]][None, :, None], self.z[b[0]][:, None, None]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, sx, cy, sy, cz, sz = np.cos(a[0]), np.sin(a[0]), np.cos(a[1]), np.sin(a[1]), np.cos(a[2]), np.sin(a[2])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Painter:
    """Paints lobulated blobs, tubes and slabs into a label map on a grid (phantom mm)."""

    def __init__(self, grid: _Grid, labels: np.ndarray, rng: np.random.Generator,
                 displacement: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.g, self.labels, self.rng = grid, labels, rng
        self.disp = displacement
        self.keep = False  # return full-size masks of what was painted (set around the calls that need them)

    def _xyz(self, b):
        x, y, z = self.g.coords(b)
        if self.disp is None:
            return x, y, z
        dx, dy, dz = (d[b] for d in self.disp)
        return x + dx, y + dy, z + dz

    def blob(self, code: int, centre, semi, lobulation: float = 0.08, rot_deg: float = 12.0,
             within: np.ndarray | None = None, only: tuple[int, ...] | None = None, rot: np.ndarray | None = None
             ) -> np.ndarray | None:
        """Ellipsoid whose radius is modulated by a few random low-order waves (lobulation)."""
        c, s = np.asarray(centre, float), np.asarray(semi, float)
        reach = s * (1 + 3 * lobulation) + 12.0
        b = self.g.box(c - reach, c + reach)
        if b is None:
            return None
        x, y, z = self._xyz(b)
        r = rot if rot is not None else _rotation(self.rng, rot_deg)
        px, py, pz = x - c[0], y - c[1], z - c[2]
        qx = (r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz) / s[0]
        qy = (r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz) / s[1]
        qz = (r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz) / s[2]
        rad = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-6
        mod = np.ones_like(rad)
        for _ in range(3):
            w = self.rng.normal(size=3)
            w *= self.rng.uniform(1.5, 3.5) / np.linalg.norm(w)
            mod = mod + lobulation * self.rng.uniform(0.4, 1.0) * np.sin(
                (w[0] * qx + w[1] * qy + w[2] * qz) / rad + self.rng.uniform(0, 2 * np.pi))
        m = rad <= mod
        return self._apply(code, b, m, within, only)

    def tube(self, code: int, points, radius: float, semi_y: float | None = None,
             within: np.ndarray | None = None, only: tuple[int, ...] | None = None) -> None:
        """A polyline tube (circular, or elliptical in the x-y plane when ``semi_y`` is given)."""
        pts = [np.asarray(p, float) for p in points]
        ry = semi_y or radius
        for p0, p1 in itertools.pairwise(pts):
            reach = max(radius, ry) + 2.0
            b = self.g.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if b is None:
                continue
            x, y, z = self._xyz(b)
            d = p1 - p0
            t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
            m = ((x - p0[0] - t * d[0]) / radius) ** 2 + ((y - p0[1] - t * d[1]) / ry) ** 2 \
                + ((z - p0[2] - t * d[2]) / max(radius, ry)) ** 2 <= 1.0
            self._apply(code, b, m, within, only)

    def _apply(self, code, b, m, within, only) -> np.ndarray | None:
        m = np.broadcast_to(m, tuple(s.stop - s.start for s in b)).copy()
        view = self.labels[b]
        if within is not None:
            m &= np.broadcast_to(within, self.labels.shape)[b]
        if only is not None:
            m &= np.isin(view, only)
        view[m] = code
        if not self.keep:
            return None
        full = np.zeros(self.labels.shape, bool)
        full[b] = m
        return full


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                  scale_mm: float, amplitude: float) -> np.ndarray:
    """Zero-mean smooth random field (std ``amplitude``), correlation length ~``scale_mm``.

    White noise on a coarse lattice (one node per ``scale_mm``) spread to the grid with separable Gaussian
    weights: three small matrix products instead of a cubic 3D zoom (25x faster on a 200-slice grid).
    """
    mats = []
    for n, sp in zip(shape, spacing):
        length = n * sp
        c = max(2, int(np.ceil(length / scale_mm)) + 2)
        nodes = np.linspace(-scale_mm, length + scale_mm, c)
        pos = (np.arange(n) + 0.5) * sp
        w = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / (0.6 * scale_mm)) ** 2)
        mats.append((w / w.sum(1, keepdims=True)).astype(np.float32))
    f = rng.standard_normal([m.shape[1] for m in mats]).astype(np.float32)
    f = f @ mats[2].T  # (c0, c1, n2)
    f = np.matmul(mats[1], f)  # (c0, n1, n2)
    f = np.tensordot(mats[0], f, axes=(1, 0))  # (n0, n1, n2)
    f -= f.mean()
    return (f * (amplitude / max(float(f.std()), 1e-6))).astype(np.float32)


# ----------------------------------------------------------------------------- anatomy
def make_labels(rng: np.random.Generator, spacing: tuple[float, float, float], variant: str = "train",
                z_range: tuple[float, float] = (130.0, -360.0), arms: str | None = None
                ) -> tuple[np.ndarray, _Grid, dict[str, Any]]:
    """A random abdominal label map (uint8, :data:`LABELS`) on a grid spanning ``z_range`` (mm, top, bottom).

    z = 0 is the nominal liver dome; the painted dome is measured afterwards (:func:`make_abdomen`).
    """
    _check("variant", variant, tuple(VARIANT_RANGES))
    vr = VARIANT_RANGES[variant]
    sz, sy, sx = spacing
    sb = _pick(rng, vr["body_scale"])
    habitus = float(rng.uniform(0.85, 1.2))  # width / depth
    ax = 150.0 * sb * np.sqrt(habitus) * rng.uniform(0.95, 1.05)
    ay = 112.0 * sb / np.sqrt(habitus) * rng.uniform(0.95, 1.05)
    arms = arms or ("in" if rng.uniform() < 0.35 else "out")
    fov = 2 * ax + (150.0 if arms == "in" else 0.0) + float(rng.uniform(20, 80))
    fov = float(min(max(fov, 2 * ay + 60), 500.0))
    nz = max(int(np.ceil((z_range[0] - z_range[1]) / sz)), 8)
    # At most a 160 x 160 matrix (pixels >= 2.4-3 mm at these FOVs): the checks resample to ~3 mm anyway, and
    # it bounds time and memory on shared CPUs. Thin slices still come with their own slice profile.
    sy, sx = max(sy, fov / 160), max(sx, fov / 160)
    spacing = (sz, sy, sx)
    ny, nx = max(int(np.round(fov / sy)), 16), max(int(np.round(fov / sx)), 16)
    grid = _Grid(x=((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32),
                 y=((np.arange(ny) - (ny - 1) / 2) * sy + 5.0).astype(np.float32),
                 z=(z_range[1] + (np.arange(nz) + 0.5) * sz).astype(np.float32))
    labels = np.zeros((nz, ny, nx), np.uint8)
    # Whole-map deformation (SynthSeg-style): smooth displacement of up to ~6 mm.
    disp = tuple(_smooth_field(rng, (nz, ny, nx), spacing, 90.0, float(rng.uniform(1.0, 4.0))) for _ in range(3))
    P = _Painter(grid, labels, rng, disp)  # type: ignore[arg-type]
    L = LABELS
    xx, yy = grid.x[None, None, :] + disp[0], grid.y[None, :, None] + disp[1]
    zz = grid.z[:, None, None] + disp[2]

    # Body wall: super-ellipse cross-section, flatter at the back, slowly varying with z. Built in 2D (the
    # mid-slice deformation) with a per-slice taper: the wall needs no 3D field, and it is 10x cheaper.
    expo = float(rng.uniform(2.0, 2.8))
    taper = (1.0 + 0.0004 * float(rng.uniform(-1, 1)) * grid.z).astype(np.float32)
    back_f = 1.0 + float(rng.uniform(0.0, 0.15))
    mid = nz // 2
    x2 = np.abs(grid.x[None, :] + disp[0][mid]).astype(np.float32)
    y2 = (grid.y[:, None] + disp[1][mid]).astype(np.float32)
    y2 = np.abs(np.where(y2 > 0, y2 * back_f, y2))
    by = ay * taper

    def inside(da: float, db: float) -> np.ndarray:
        ea = (ax - da) ** expo
        eb = (ay - db) ** expo
        px_, py_ = (x2 ** expo / ea)[None], (y2 ** expo / eb)[None]
        tz = (taper ** expo)[:, None, None]
        return px_ + py_ <= tz

    fat_t = float(rng.uniform(5, 45)) * sb
    fat_front = fat_t * float(rng.uniform(1.0, 1.8))
    muscle_t = float(rng.uniform(6, 15))
    body = inside(0.0, 0.0)
    wall = inside(fat_t, (fat_t + fat_front) / 2)
    cavity = inside(fat_t + muscle_t, (fat_t + fat_front) / 2 + muscle_t)
    labels[body] = L["subcutaneous_fat"]
    labels[wall] = L["muscle"]
    labels[cavity] = L["visceral_fat"]
    y_back = float(ay * 0.9)  # posterior cavity edge, roughly

    organ = lambda: _pick(rng, vr["organ_scale"]) * rng.uniform(0.93, 1.07, 3)  # noqa: E731
    cav_only = (L["visceral_fat"],)

    # Spine geometry (needed by most organs).
    vb_semi = np.array([rng.uniform(17, 25), rng.uniform(14, 19)])
    spine_x = float(rng.uniform(-6, 6))
    # Vertebral body centre 60-85 mm in front of the skin of the back (paraspinal muscles behind it).
    spine_y = float(by.mean() / back_f - 0.6 * fat_t - rng.uniform(55, 75))
    vb_front = spine_y - vb_semi[1]

    ls = np.array([70.0, 68.0, 78.0]) * organ()
    liver_c = np.array([-0.55 * ax + ls[0] * 0.45 + rng.uniform(-10, 10), rng.uniform(-30, -8), -ls[2]])
    P.keep = True
    # Kidneys: tilted (lower pole lateral and anterior), right lower than left.
    ks = np.array([27.0, 24.0, 55.0]) * organ()
    kid_top_r = -ls[2] * rng.uniform(0.75, 1.35)
    kid: dict[str, dict] = {}
    for side, name in ((-1, "right"), (1, "left")):
        top = kid_top_r + (rng.uniform(5, 35) if side > 0 else 0.0)
        c = np.array([side * (vb_semi[0] + ks[0] + rng.uniform(18, 40)), spine_y + rng.uniform(-5, 15),
                      top - ks[2]])
        tilt_lat, tilt_ap = np.deg2rad(rng.uniform(5, 22)), np.deg2rad(rng.uniform(5, 20))
        # Rotation so the long (z) axis leans laterally and anteriorly downwards.
        r1 = np.array([[1, 0, 0], [0, np.cos(tilt_ap), -np.sin(tilt_ap)], [0, np.sin(tilt_ap), np.cos(tilt_ap)]])
        r2 = np.array([[np.cos(tilt_lat), 0, -side * np.sin(tilt_lat)], [0, 1, 0],
                       [side * np.sin(tilt_lat), 0, np.cos(tilt_lat)]])
        rot = (r2 @ r1).T
        outer = P.blob(L["kidney_cortex"], c, ks, 0.03, 0.0, within=cavity,
                       only=(L["visceral_fat"], L["bowel_content"], L["bowel_gas"]), rot=rot)
        P.keep = False
        if outer is None:
            continue
        cort = float(rng.uniform(0.62, 0.78))
        P.blob(L["kidney_medulla"], c, ks * [cort, cort, 0.85], 0.06, 0.0, only=(L["kidney_cortex"],), rot=rot)
        # Renal sinus at the hilum (medial, anterior): fat with the collecting system inside.
        sinus_c = c + np.array([-side * ks[0] * 0.45, -ks[1] * 0.25, 0.0])
        P.blob(L["visceral_fat"], sinus_c, ks * [0.38, 0.33, 0.5], 0.05, 0.0,
               only=(L["kidney_medulla"], L["kidney_cortex"]), rot=rot)
        P.blob(L["collecting_system"], sinus_c + [side * 3, 0, 0], ks * [0.26, 0.22, 0.42], 0.08, 0.0,
               only=(L["visceral_fat"], L["kidney_medulla"]), rot=rot)
        km = np.isin(labels, KIDNEY_CODES) & outer
        P.keep = True
        zs = grid.z[np.flatnonzero(km.any((1, 2)))] if km.any() else np.array([c[2]])
        kid[name] = {"centre_mm": [round(float(v), 1) for v in c], "top_mm": round(float(zs.max()), 1),
                     "bottom_mm": round(float(zs.min()), 1)}

    P.keep = False
    # Liver: right lobe + left lobe, lobulated; the dome near z = 0.
    # Painted after the kidneys, over fat only: the right kidney keeps its place under the liver.
    P.blob(L["liver"], liver_c, ls, 0.07, 10.0, within=cavity, only=cav_only)
    lls = np.array([60.0, 38.0, 35.0]) * organ()
    left_c = liver_c + np.array([ls[0] * 0.9 + rng.uniform(-10, 15), -ls[1] * 0.45,
                                 -ls[2] * 0.35 + rng.uniform(-15, 5)])
    P.blob(L["liver"], left_c, lls, 0.1, 15.0, within=cavity, only=cav_only)
    liver_mask = labels == L["liver"]
    # Gallbladder at the inferior surface, cysts inside.
    gb_c = liver_c + np.array([rng.uniform(10, 35), -ls[1] * 0.55, -ls[2] * rng.uniform(0.6, 0.85)])
    if rng.uniform() < 0.8:
        P.blob(L["gallbladder"], gb_c, rng.uniform([12, 12, 25], [20, 20, 45]), 0.05, 25.0,
               only=(L["liver"], L["visceral_fat"]), within=cavity)
    for _ in range(int(rng.integers(0, 4))):
        c = liver_c + rng.uniform(-0.6, 0.6, 3) * ls
        P.blob(L["liver_cyst"], c, np.full(3, rng.uniform(4, 14)), 0.05, 0.0, only=(L["liver"],))

    # Spleen, left upper quadrant, posterior.
    ss = np.array([30.0, 50.0, 50.0]) * organ()
    spleen_c = np.array([0.55 * ax + rng.uniform(-10, 5), spine_y - rng.uniform(0, 25),
                         -ss[2] - rng.uniform(15, 40)])
    P.blob(L["spleen"], spleen_c, ss, 0.1, 20.0, within=cavity, only=cav_only)
    # Stomach (gas anterior, fluid posterior), left upper quadrant, anterior to the spleen.
    st_c = np.array([0.3 * ax + rng.uniform(-15, 15), -0.25 * ay + rng.uniform(-10, 15), -rng.uniform(35, 70)])
    st_s = rng.uniform([30, 25, 35], [50, 40, 60])
    P.keep = True
    st = P.blob(L["bowel_content"], st_c, st_s, 0.1, 20.0, within=cavity, only=cav_only)
    if st is not None and rng.uniform() < 0.8:
        gas = st & (yy < st_c[1] - st_s[1] * rng.uniform(-0.1, 0.4))
        labels[gas] = L["bowel_gas"]

    P.keep = False
    # Vessels.
    a_r = float(rng.uniform(8, 14))
    a_x = spine_x + float(rng.uniform(5, 22))
    a_y = vb_front - a_r - float(rng.uniform(0, 8))
    kid_bottom = min(v["bottom_mm"] for v in kid.values()) if kid else -200.0
    z_bif = kid_bottom - float(rng.uniform(10, 60))
    wig = float(rng.uniform(-5, 5))
    top = z_range[0] + 10
    P.tube(L["aorta"], [(a_x - 8, a_y + 20, top), (a_x, a_y + 5, 30.0), (a_x + wig, a_y, -120.0),
                        (a_x, a_y, z_bif)], a_r)
    il_r = a_r * 0.6
    for side in (-1, 1):
        P.tube(L["aorta"], [(a_x, a_y, z_bif + 5), (a_x + side * 55, a_y + 20, z_bif - 90),
                            (a_x + side * 75, a_y + 10, z_range[1] - 10)], il_r)
    ivc_x = spine_x - float(rng.uniform(18, 34))
    ivc_ry = float(rng.uniform(6, 11))
    ivc_rx = float(rng.uniform(9, 14))
    ivc_y = vb_front - ivc_ry - float(rng.uniform(-2, 10))
    P.tube(L["ivc"], [(ivc_x, ivc_y, z_bif - 10), (ivc_x - 3, ivc_y - 5, -100.0), (ivc_x - 5, ivc_y - 15, 5.0),
                      (ivc_x, ivc_y - 25, 40.0)], ivc_rx, semi_y=ivc_ry)
    for side in (-1, 1):
        P.tube(L["ivc"], [(ivc_x, ivc_y, z_bif - 5), (ivc_x + side * 55, ivc_y + 25, z_bif - 100),
                          (ivc_x + side * 70, ivc_y + 15, z_range[1] - 10)], ivc_rx * 0.55)
    # Hepatic veins: from the IVC below the dome fanning into the liver (only where liver is).
    for ang in rng.uniform(-70, 70, 3):
        tip = np.array([ivc_x - 55 * np.cos(np.deg2rad(ang + 60)), ivc_y - 20 - 50 * np.sin(np.deg2rad(ang + 60)),
                        -rng.uniform(20, 50)])
        P.tube(L["hepatic_vein"], [(ivc_x - 5, ivc_y - 15, -12.0), tuple(tip)], float(rng.uniform(3, 6)),
               only=(L["liver"],))
    # Portal vein: confluence behind the pancreas neck to the liver hilum, branches in the liver; splenic vein.
    conf = np.array([spine_x + rng.uniform(-5, 15), a_y - rng.uniform(25, 45), -ls[2] * rng.uniform(1.0, 1.3)])
    hilum = liver_c + np.array([ls[0] * 0.25, ls[1] * 0.1, -ls[2] * 0.1])
    pv_r = float(rng.uniform(6, 9))
    P.tube(L["portal_vein"], [tuple(conf - [0, 0, 40]), tuple(conf), tuple(hilum)], pv_r,
           only=(L["visceral_fat"], L["liver"], L["bowel_content"]))
    for d in (np.array([-35, 10, 25.0]), np.array([30, -20, 20.0])):
        P.tube(L["portal_vein"], [tuple(hilum), tuple(hilum + d * rng.uniform(0.7, 1.3, 3))], pv_r * 0.6,
               only=(L["liver"],))
    P.tube(L["portal_vein"], [tuple(conf), tuple(spleen_c + [-ss[0] * 0.8, 0, 0])], pv_r * 0.65,
           only=(L["visceral_fat"], L["bowel_content"]))

    # Bowel: colon frame (ascending right, transverse, descending left) and small-bowel loops.
    col_r = float(rng.uniform(14, 24))
    zt = kid_bottom + float(rng.uniform(10, 50))
    oral = rng.uniform() < 0.15
    colon = [(-0.62 * ax, -0.05 * ay, z_range[1]), (-0.62 * ax, -0.1 * ay, zt), (0, -0.6 * ay, zt + 15),
             (0.62 * ax, -0.1 * ay, zt + 30), (0.62 * ax, 0.0, z_range[1])]
    before = labels.copy()
    P.tube(L["bowel_content"], colon, col_r, within=cavity, only=cav_only)
    for _ in range(int(rng.integers(5, 12))):
        c = np.array([rng.uniform(-0.5, 0.5) * ax, rng.uniform(-0.7, 0.1) * ay, rng.uniform(kid_bottom - 120, zt)])
        P.blob(L["oral_contrast"] if oral and rng.uniform() < 0.6 else L["bowel_content"], c,
               rng.uniform(10, 22, 3), 0.15, 30.0, within=cavity, only=cav_only)
    bowel = (labels != before) & (labels == L["bowel_content"])
    gas = bowel & (_smooth_field(rng, labels.shape, spacing, 25.0, 1.0) + (yy / ay) * 1.5 < -0.3)
    labels[gas] = L["bowel_gas"]

    # Muscles: psoas (from the upper kidneys down, growing), quadratus lumborum, erector spinae.
    for side in (-1, 1):
        P.tube(L["muscle"], [(spine_x + side * (vb_semi[0] + 5), spine_y - 2, kid_top_r - 20),
                             (spine_x + side * (vb_semi[0] + 22), spine_y - 8, z_bif - 40),
                             (spine_x + side * (vb_semi[0] + 38), spine_y - 25, z_range[1] - 10)],
               float(rng.uniform(14, 22)), within=cavity, only=cav_only)
        P.tube(L["muscle"], [(spine_x + side * 45, spine_y + 45, z_range[0]), (spine_x + side * 45, spine_y + 45,
                                                                               z_range[1])],
               float(rng.uniform(22, 32)), semi_y=float(rng.uniform(16, 24)), within=body,
               only=(L["subcutaneous_fat"], L["muscle"], L["visceral_fat"]))
    # Spine: vertebral bodies with discs, canal, posterior elements.
    level = float(rng.uniform(0, 34))
    height = float(rng.uniform(28, 36))
    disc_h = float(rng.uniform(6, 10))
    cortex = float(rng.uniform(1.5, 3.5))
    for code, grow in ((L["bone_cortical"], 0.0), (L["bone_cancellous"], -cortex)):
        P.tube(code, [(spine_x, spine_y, z_range[0] + 20), (spine_x, spine_y, z_range[1] - 20)],
               vb_semi[0] + grow, semi_y=vb_semi[1] + grow)
    disc_rows = np.mod(grid.z - level, height) < disc_h
    vb = np.isin(labels, (L["bone_cortical"], L["bone_cancellous"])) & (np.abs(xx - spine_x) < vb_semi[0] + 2) \
        & (np.abs(yy - spine_y) < vb_semi[1] + 2)
    labels[vb & disc_rows[:, None, None]] = L["disc"]
    canal_y = spine_y + vb_semi[1] + 10
    P.tube(L["bone_cortical"], [(spine_x, canal_y + 8, z_range[0] + 20), (spine_x, canal_y + 8, z_range[1] - 20)],
           float(rng.uniform(14, 20)), semi_y=float(rng.uniform(14, 20)))
    P.tube(L["spinal_canal"], [(spine_x, canal_y, z_range[0] + 20), (spine_x, canal_y, z_range[1] - 20)], 8.0,
           semi_y=7.0)
    # Ribs: oblique arcs in the wall of the upper abdomen and chest, every ~25 mm.
    ring = wall & ~cavity
    rib_z0 = float(rng.uniform(-20, 10))
    for i in range(9):
        zc = rib_z0 + 40 - i * float(rng.uniform(22, 28))
        zs = slice(*np.searchsorted(grid.z, [zc - 40, zc + 40]))
        slope = (yy[zs] / ay) * 25.0  # ribs run down anteriorly
        band = np.abs(zz[zs] - zc + slope) < float(rng.uniform(2.5, 4.5))
        keep = ring[zs] & band & (np.abs(xx[zs]) > 0.25 * ax + i * 6)
        labels[zs][keep] = L["bone_cortical"]
    # Iliac wings below the kidneys.
    crest = kid_bottom - float(rng.uniform(5, 45))
    for side in (-1, 1):
        P.tube(L["bone_cortical"], [(side * 0.45 * ax, spine_y - 5, crest), (side * 0.6 * ax, 0.0, crest - 60),
                                    (side * 0.45 * ax, -0.2 * ay, crest - 140)], float(rng.uniform(6, 10)),
               semi_y=float(rng.uniform(20, 30)), within=body)
    # Lungs and heart above a two-dome diaphragm (right dome over the liver top).
    lz = np.where(liver_mask.any(0), grid.z[(liver_mask.shape[0] - 1 - np.argmax(liver_mask[::-1], 0))], -np.inf)
    dome_r = 4.0 - 0.005 * ((xx[0] - liver_c[0]) ** 2 + (yy[0] - liver_c[1]) ** 2)
    dome_l = -float(rng.uniform(8, 30)) - 0.005 * ((xx[0] - 0.4 * ax) ** 2 + (yy[0] - 0.1 * ay) ** 2)
    floor = np.maximum(np.where(xx[0] < spine_x, dome_r, dome_l), lz + 4.0)
    hs = np.array([60.0, 48.0, 50.0]) * organ()
    heart_c = np.array([spine_x + rng.uniform(5, 30), -0.35 * ay, hs[2] + rng.uniform(0, 15)])
    medi = (np.abs(xx - spine_x - 5) < 25) & (yy > -0.6 * ay)
    lung = (zz > floor[None]) & cavity & ~medi & np.isin(labels, (L["visceral_fat"], L["muscle"], L["bowel_content"],
                                                                  L["bowel_gas"]))
    labels[lung] = L["lung"]
    P.blob(L["heart"], heart_c, hs, 0.05, 15.0, within=cavity & (zz > floor[None] - 10),
           only=(L["lung"], L["visceral_fat"], L["muscle"]))
    # Arms by the side of the body (else raised above the head: outside the scan).
    if arms == "in":
        for side in (-1, 1):
            ac = np.array([side * (ax + rng.uniform(35, 60)), rng.uniform(-20, 20)])
            ar = float(rng.uniform(35, 50))
            axis = [(ac[0], ac[1], z_range[0] + 20), (ac[0] + side * 5, ac[1], z_range[1] - 20)]
            P.tube(L["subcutaneous_fat"], axis, ar)
            P.tube(L["muscle"], axis, ar - 8, only=(L["subcutaneous_fat"],))
            P.tube(L["bone_cortical"], axis, float(rng.uniform(9, 13)), only=(L["muscle"],))
    # Table: a curved slab just under the back.
    gap = float(rng.uniform(0, 8))
    ty = float(by.max() + gap)
    tt = float(rng.uniform(6, 16))
    ycurve = ty + 0.0008 * (grid.x[None, :] ** 2)
    tab = (grid.y[:, None] >= ycurve) & (grid.y[:, None] <= ycurve + tt) & (np.abs(grid.x[None, :]) < 230)
    labels[:, tab & (labels[0] == 0)] = L["table"]
    info = {"body_scale": round(sb, 3), "habitus": round(habitus, 3), "body_semi_axes_mm": [round(ax, 1), round(ay, 1)],
            "subcutaneous_fat_mm": round(fat_t, 1), "arms": arms, "fov_mm": round(fov, 1), "kidneys": kid,
            "liver_semi_mm": [round(v, 1) for v in ls], "aorta_radius_mm": round(a_r, 1),
            "aortic_bifurcation_mm": round(z_bif, 1), "oral_contrast": bool(oral), "y_back_mm": round(y_back, 1)}
    info["spacing_mm"] = [float(v) for v in spacing]
    return labels, grid, info


# ----------------------------------------------------------------------------- appearance
def render(labels: np.ndarray, hu: dict[str, float], spacing: tuple[float, float, float], rng: np.random.Generator,
           thickness: float, noise_hu: float, phase: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map -> HU image: texture, kernel PSF, slice profile, correlated noise, scanner offset."""
    lut = np.zeros(256, np.float32)
    for name, code in LABELS.items():
        lut[code] = hu[name]
    img = lut[labels]
    tex_amp = float(rng.uniform(2.0, 8.0))
    tex = _smooth_field(rng, labels.shape, spacing, float(rng.uniform(8, 25)), 1.0)
    solid = np.isin(labels, (LABELS["liver"], LABELS["spleen"], LABELS["kidney_cortex"], LABELS["kidney_medulla"],
                             LABELS["muscle"]))
    img[solid] += tex_amp * tex[solid]
    if phase == "arterial":  # arciform splenic enhancement
        sp = labels == LABELS["spleen"]
        if sp.any():
            img[sp] += 3.0 * tex_amp * (tex[sp] - tex[sp].mean())
    sz = spacing[0]
    psf = float(rng.uniform(0.3, 1.0))  # in-plane point spread (pixels), smooth to sharp kernels
    img = ndimage.gaussian_filter(img, (thickness / 2.355 / sz, psf, psf))
    corr = float(rng.uniform(0.3, 1.5))
    n = rng.standard_normal(img.shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, (0, corr, corr))
    n /= max(float(n.std()), 1e-6)
    img += np.float32(noise_hu) * n
    offset = float(rng.uniform(-6, 6))
    img += offset
    img = np.clip(img, -1024.0, 3071.0)
    return img.astype(np.float32), {"texture_hu": round(tex_amp, 2), "psf_px": round(psf, 3),
                                    "noise_correlation_px": round(corr, 3), "scanner_offset_hu": round(offset, 2)}


def required_mask(labels: np.ndarray) -> np.ndarray:
    """Anatomy an abdominal CT must cover (guideline 'liver_dome_to_kidneys'): liver and kidneys."""
    return np.isin(labels, LIVER_CODES) | np.isin(labels, KIDNEY_CODES)


def make_abdomen(rng: np.random.Generator, phase: str = "portal_venous", enhancement: str = "optimal",
                 variant: str = "train", coverage: str = "full", margins_mm: tuple[float, float] | None = None,
                 cut_fraction: float | None = None, spacing: tuple[float, float, float] | None = None,
                 thickness: float | None = None, noise_hu: float | None = None,
                 time_s: float | None = None, scale: float | None = None, arms: str | None = None
                 ) -> tuple[Volume, np.ndarray, dict[str, Any]]:
    """One randomised abdominal CT: ``(Volume in HU, label map, info)``.

    ``coverage``: ``full`` keeps the liver dome and the lower kidney poles inside with ``margins_mm``
    (above the dome, below the kidneys; default U(5, 90) and U(10, 140)); ``superior`` / ``inferior``
    cut ``cut_fraction`` (default U(0.05, 0.35)) of the liver-dome-to-kidneys extent off that end. The
    scan range is chosen from the painted anatomy, so the label always matches the image: no padding.
    """
    _check("phase", phase, PHASES)
    _check("coverage", coverage, ("full", "superior", "inferior"))
    vr = VARIANT_RANGES[_check("variant", variant, tuple(VARIANT_RANGES))]
    hu, timing = bolus_hu(rng, phase, enhancement, time_s, scale)
    if thickness is None:
        thickness = float(rng.choice(SLICE_THICKNESSES, p=[0.03, 0.03, 0.04, 0.16, 0.24, 0.26, 0.24]))
    thin = thickness < 1.5
    if spacing is None:
        # Thin slices with coarse pixels keep the voxel count (and memory) of one case bounded.
        px = float(rng.uniform(2.4, 3.0)) if thin else float(rng.uniform(1.2, 3.0))
        spacing = (float(thickness), round(px, 3), round(px, 3))
    if min(spacing) <= 0 or thickness <= 0:
        raise ScanQCError(ErrorCode.USAGE, f"spacing and thickness must be positive, got {spacing!r}, {thickness!r}")
    m_top, m_bot = margins_mm or ((float(rng.uniform(5, 40)), float(rng.uniform(10, 50))) if thin
                                  else (float(rng.uniform(5, 90)), float(rng.uniform(10, 140))))
    if min(m_top, m_bot) < 0:
        raise ScanQCError(ErrorCode.USAGE, f"margins must be >= 0 mm, got {(m_top, m_bot)!r}")
    z_range = (max(40.0, m_top + 25.0), -300.0 - m_bot)
    labels, grid, info = make_labels(rng, spacing, variant, z_range, arms)
    spacing = tuple(info.pop("spacing_mm"))  # type: ignore[assignment]
    req = required_mask(labels)
    rows = np.flatnonzero(req.any((1, 2)))
    if rows.size < 4:
        raise ScanQCError(ErrorCode.INTERNAL, "generated anatomy has no liver/kidneys in range")
    z_dome, z_kid = float(grid.z[rows[-1]]), float(grid.z[rows[0]])
    kid = np.flatnonzero(np.isin(labels, KIDNEY_CODES).any((1, 2)))
    z_kid_bottom = float(grid.z[kid[0]]) if kid.size else z_kid
    extent = z_dome - z_kid
    cf = float(cut_fraction if cut_fraction is not None else rng.uniform(0.05, 0.35)) if coverage != "full" else 0.0
    sz = spacing[0]
    # Scan range [bottom, top] in mm; a full end keeps >= one slice (and the margin) beyond the anatomy.
    top = z_dome - cf * extent if coverage == "superior" else z_dome + max(m_top, sz)
    bottom = z_kid + cf * extent if coverage == "inferior" else z_kid - max(m_bot, sz)
    i0 = int(np.searchsorted(grid.z, bottom))
    i1 = int(np.searchsorted(grid.z, top, side="right"))
    i0, i1 = max(0, i0), min(len(grid.z), i1)
    labels = np.ascontiguousarray(labels[i0:i1])
    zc = grid.z[i0:i1]
    noise = float(noise_hu if noise_hu is not None else _pick(rng, vr["noise_hu"]))
    img, look = render(labels, hu, spacing, rng, float(thickness), noise, phase)
    table_z = float(rng.uniform(-600.0, 0.0))
    vol = Volume(img, spacing, (float(grid.x[0]), float(grid.y[0]), float(zc[0] + table_z)), modality="CT")
    req = required_mask(labels)
    touches = [e for e, hit in (("superior", req[-1].any()), ("inferior", req[0].any())) if hit]
    info.update({
        "generator": "abdomen.make_abdomen", "phase": phase, "enhancement": enhancement, "variant": variant,
        "timing": timing, "hu": hu, "noise_hu": round(noise, 2), "thickness_mm": float(thickness),
        "spacing_mm": [float(s) for s in spacing], "shape": list(labels.shape), **look,
        "coverage": {"end": coverage, "cut_fraction": round(cf, 3), "touches": touches,
                     "margin_superior_mm": round(float(zc[-1] + sz / 2 - z_dome), 1),
                     "margin_inferior_mm": round(float(z_kid - (zc[0] - sz / 2)), 1),
                     "kidney_bottom_to_last_slice_mm": round(float(z_kid_bottom - zc[0]), 1)},
        "liver_dome_z_mm": round(z_dome + table_z, 2), "kidney_bottom_z_mm": round(z_kid_bottom + table_z, 2),
    })
    return vol, labels, info


def suboptimal_label(phase: str, enhancement: str) -> str:
    """Manifest ``enhancement`` column: empty for non-contrast."""
    return "" if phase == "non_contrast" else enhancement


def abdomen_case(rng: np.random.Generator, task: str, label: str, variant: str = "train",
                 suboptimal_rate: float = 0.3) -> tuple[Volume, dict[str, Any], dict[str, Any]]:
    """One manifest case for ``scanqc data generate --generator abdomen`` (contrast_phase or coverage)."""
    if task == "contrast_phase":
        phase = _check("phase", label, PHASES)
        enh = "suboptimal" if phase != "non_contrast" and rng.uniform() < suboptimal_rate else "optimal"
        vol, _, info = make_abdomen(rng, phase, enh, variant)
        fields = {"modality": "CT", "label": phase, "phase": phase, "enhancement": suboptimal_label(phase, enh),
                  "body_region": "abdomen"}
    elif task == "coverage":
        end = _check("coverage label", label, ("full", "superior", "inferior"))
        phase = str(rng.choice(PHASES))
        vol, _, info = make_abdomen(rng, phase, "optimal", variant, coverage=end)
        fields = {"modality": "CT", "label": end, "missing": [] if end == "full" else [end], "phase": phase,
                  "body_region": "abdomen"}
    else:
        raise ScanQCError(ErrorCode.USAGE,
                          f"the abdomen generator makes contrast_phase and coverage cases, not {task!r}")
    info.pop("hu_map", None)
    return vol, fields, info
