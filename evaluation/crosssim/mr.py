"""MR acquisition of a head label map: sequence contrast, geometry, slice profile, bias field, Rician noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from . import head as H
from .dicomio import Geometry
from .fields import rotation

# Relative tissue intensity (white matter = 1) per sequence family: [low, high], drawn per case. Ordering and
# ratios follow the relaxation times of Wansapura et al. 1999 (JMRI 9:531, GM/WM T1/T2 at 3 T), Stanisz et
# al. 2005 (MRM 54:507, muscle/fat/marrow) and CSF/vitreous T1 ~4 s, T2 ~2 s, as seen on typical clinical
# contrasts (fat bright on TSE, CSF dark on FLAIR, cortical bone dark everywhere).
_T = {
    #            wm          gm           deep_gm      csf          cgm          cwm          stem         cord
    "T1_MPRAGE": [(0.95, 1.05), (0.55, 0.72), (0.70, 0.85), (0.08, 0.22), (0.55, 0.72), (0.92, 1.02), (0.85, 0.98),
                  (0.85, 1.0), (0.0, 0.06), (0.8, 1.3), (0.45, 0.65), (1.0, 1.5), (0.55, 0.8), (0.1, 0.22),
                  (0.6, 0.85), (0.45, 0.7)],
    "T1_SPGR": [(0.95, 1.05), (0.65, 0.80), (0.75, 0.88), (0.15, 0.30), (0.65, 0.80), (0.92, 1.02), (0.85, 0.98),
                (0.85, 1.0), (0.0, 0.08), (0.9, 1.4), (0.5, 0.7), (1.1, 1.6), (0.6, 0.85), (0.15, 0.3),
                (0.65, 0.9), (0.5, 0.75)],
    "T1_SE": [(0.95, 1.05), (0.70, 0.85), (0.80, 0.90), (0.20, 0.35), (0.70, 0.85), (0.92, 1.02), (0.85, 0.98),
              (0.85, 1.0), (0.0, 0.08), (1.1, 1.6), (0.55, 0.75), (1.3, 1.8), (0.6, 0.9), (0.2, 0.35),
              (0.7, 0.9), (0.6, 0.9)],
    "T2": [(0.95, 1.05), (1.30, 1.60), (1.10, 1.40), (3.0, 4.5), (1.30, 1.60), (0.95, 1.1), (1.0, 1.2),
           (1.0, 1.3), (0.0, 0.1), (1.8, 2.6), (0.6, 0.9), (2.0, 3.0), (1.0, 1.5), (3.0, 4.5),
           (0.5, 0.9), (2.0, 3.0)],
    "PD": [(0.95, 1.05), (1.15, 1.35), (1.05, 1.25), (1.2, 1.6), (1.15, 1.35), (0.95, 1.05), (1.0, 1.15),
           (1.0, 1.2), (0.0, 0.1), (1.2, 1.6), (0.7, 0.95), (1.2, 1.6), (1.0, 1.3), (1.2, 1.6),
           (0.7, 0.9), (1.3, 1.7)],
    "FLAIR": [(0.95, 1.05), (1.20, 1.50), (1.10, 1.30), (0.05, 0.25), (1.20, 1.50), (0.95, 1.05), (1.0, 1.15),
              (1.0, 1.2), (0.0, 0.08), (1.2, 1.8), (0.5, 0.8), (1.3, 2.0), (0.9, 1.3), (0.05, 0.3),
              (0.4, 0.7), (1.3, 2.0)],
}
# order of the rows above after cord: bone, marrow, muscle, fat, skin, vitreous, lens, mucosa
_ROW_LABELS = [H.WM, H.GM, H.DGM, H.CSF, H.CGM, H.CWM, H.STEM, H.CORD, H.BONE, H.MARROW, H.MUSCLE, H.FAT,
               H.SKIN, H.VITREOUS, H.LENS, H.MUCOSA]
TISSUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    seq: {H.LABEL_NAMES[lab]: rng for lab, rng in zip(_ROW_LABELS, rows)} for seq, rows in _T.items()}

# name, 2D/3D options, TR/TE/TI ranges (ms), flip, header words
SEQUENCES: dict[str, dict[str, Any]] = {
    "T1_MPRAGE": {"dims": ["3D"], "tr": (1800, 2400), "te": (2.0, 3.6), "ti": (850, 1100), "flip": (7, 10),
                  "desc": ["T1 MPRAGE", "t1_mprage", "MPRAGE", "T1 3D MPR"], "seq": "GR\\IR"},
    "T1_SPGR": {"dims": ["3D"], "tr": (6, 12), "te": (2.5, 5.0), "ti": None, "flip": (12, 20),
                "desc": ["3D SPGR T1", "T1 FSPGR", "t1_fl3d"], "seq": "GR"},
    "T1_SE": {"dims": ["2D"], "tr": (400, 700), "te": (8, 15), "ti": None, "flip": (90, 90),
              "desc": ["T1 SE", "t1_se", "T1W SE"], "seq": "SE"},
    "T2": {"dims": ["2D", "3D"], "tr": (3000, 6500), "te": (80, 115), "ti": None, "flip": (90, 150),
           "desc": ["T2 TSE", "t2_tse", "T2W FSE", "T2 SPACE"], "seq": "SE"},
    "PD": {"dims": ["2D"], "tr": (2000, 4000), "te": (10, 30), "ti": None, "flip": (90, 150),
           "desc": ["PD TSE", "pd_tse", "PDW FSE"], "seq": "SE"},
    "FLAIR": {"dims": ["2D", "3D"], "tr": (7000, 11000), "te": (85, 140), "ti": (2300, 2800), "flip": (90, 150),
              "desc": ["T2 FLAIR", "t2_flair", "FLAIR", "3D FLAIR SPACE"], "seq": "SE\\IR"},
}
ORIENTATIONS = {  # (row_dir, col_dir) in LPS for the standard planes
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
}


@dataclass
class Pose:
    """Head frame -> LPS: p = centre + R @ (scale * q)."""

    R: np.ndarray
    centre: np.ndarray
    scale: np.ndarray

    def moved(self, rot_deg, trans_mm, pivot: np.ndarray) -> Pose:
        Rm = rotation(*rot_deg)
        return Pose(Rm @ self.R, Rm @ (self.centre - pivot) + pivot + np.asarray(trans_mm, float), self.scale)


def draw_sequence(rng: np.random.Generator, name: str | None = None, acq: str | None = None) -> dict[str, Any]:
    name = name or str(rng.choice(list(SEQUENCES)))
    s = SEQUENCES[name]
    dim = str(rng.choice(s["dims"]))
    dim = acq if acq in s["dims"] else dim
    u = rng.uniform
    field_t = float(rng.choice([1.5, 3.0]))
    out = {"sequence": name, "acq": dim, "field_t": field_t,
           "tr_ms": round(u(*s["tr"]), 1), "te_ms": round(u(*s["te"]), 2),
           "ti_ms": round(u(*s["ti"]), 0) if s["ti"] else None, "flip_deg": round(u(*s["flip"]), 0),
           "description_stem": str(rng.choice(s["desc"]))}
    out["intensity"] = {k: round(float(u(*r)), 3) for k, r in TISSUE_RANGES[name].items()}
    return out


def tissue_lut(seq: dict[str, Any]) -> np.ndarray:
    lut = np.zeros(len(H.LABEL_NAMES), np.float32)
    for lab, name in enumerate(H.LABEL_NAMES):
        lut[lab] = seq["intensity"].get(name, 0.0)
    return lut


def render_intensity(head: H.Head, seq: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Tissue intensities on the head grid, with a little within-tissue texture, lightly smoothed."""
    img = tissue_lut(seq)[head.labels]
    tex = ndimage.gaussian_filter(rng.standard_normal(head.labels.shape).astype(np.float32), 1.2)
    img *= 1.0 + 0.025 * tex / (float(tex.std()) or 1.0)
    return ndimage.gaussian_filter(img, 0.5)


def si_axis(geom: Geometry) -> tuple[int, float]:
    """Which array axis (0 = slices, 1 = rows, 2 = columns) carries superior-inferior, and its sign
    (+1 when the index grows towards superior)."""
    dirs = [geom.normal, geom.col_dir, geom.row_dir]
    comp = [float(d[2]) for d in dirs]
    ax = int(np.argmax(np.abs(comp)))
    return ax, float(np.sign(comp[ax]))


def draw_geometry(rng: np.random.Generator, seq: dict[str, Any], plane: str, pts_head: np.ndarray,
                  si_spec: dict[str, Any] | None = None, max_inplane: int = 192,
                  oblique_deg: float = 6.0) -> tuple[Geometry, dict[str, Any]]:
    """Acquisition grid around the head (``pts_head``: LPS points of the head, N x 3).

    ``si_spec`` places the outermost slice/pixel centres along the axis that carries S-I: the superior end
    ``sup_margin`` mm beyond the highest of ``sup_pts`` (negative = inside it, a cut) and the inferior end
    ``inf_margin`` mm below the lowest of ``inf_pts``; None = head extent plus a random margin. The other
    axes cover the head with 4-30 mm of air each side."""
    u = rng.uniform
    row, col = (np.asarray(v, float) for v in ORIENTATIONS[plane])
    tilt = rotation(*(u(-oblique_deg, oblique_deg, 3))) if rng.random() < 0.6 else np.eye(3)
    row, col = tilt @ row, tilt @ col
    normal = np.cross(row, col)
    if seq["acq"] == "3D":
        thick = round(u(0.9, 1.5), 2)
        gap = 0.0
    else:
        thick = round(u(3.0, 6.0), 1)
        gap = round(float(rng.choice([0.0, 0.0, 0.1, 0.2, 0.3])) * thick, 2)
    spacing_z = thick + gap
    if seq["acq"] == "3D":  # bound the partition count (generation time): thicker partitions for wide slabs
        proj = pts_head @ normal
        span = float(proj.max() - proj.min()) + 20.0
        if span / spacing_z > 140:
            thick = spacing_z = round(min(1.5, span / 140), 2)
    spans = {}
    for name, d in (("normal", normal), ("col", col), ("row", row)):
        proj = pts_head @ d
        lo, hi = float(proj.min()) - u(4.0, 25.0), float(proj.max()) + u(4.0, 25.0)
        if si_spec is not None and abs(float(d[2])) > 0.8:
            sgn = float(np.sign(d[2]))  # projections on sgn*d grow towards superior
            sup = float((si_spec["sup_pts"] @ (sgn * d)).max()) + si_spec["sup_margin"]
            inf = float((si_spec["inf_pts"] @ (sgn * d)).min()) - si_spec["inf_margin"]
            lo, hi = (inf, sup) if sgn > 0 else (-sup, -inf)
        spans[name] = (lo, hi)
    dxy = u(0.9, 1.3)
    big = max(spans["row"][1] - spans["row"][0], spans["col"][1] - spans["col"][0])
    dxy = max(dxy, big / (max_inplane - 1))
    ny = round((spans["col"][1] - spans["col"][0]) / dxy) + 1
    nx = round((spans["row"][1] - spans["row"][0]) / dxy) + 1
    nz = round((spans["normal"][1] - spans["normal"][0]) / spacing_z) + 1
    origin = normal * spans["normal"][0] + col * spans["col"][0] + row * spans["row"][0]
    geom = Geometry(row_dir=row, col_dir=col, spacing=(spacing_z, dxy, dxy), shape=(nz, ny, nx), origin=origin)
    return geom, {"plane": plane, "slice_thickness_mm": thick, "slice_gap_mm": gap, "pixel_mm": round(dxy, 4),
                  "oblique": bool(not np.allclose(tilt, np.eye(3)))}


def head_points(head: H.Head, mask: np.ndarray, pose: Pose, step: int = 2) -> np.ndarray:
    """LPS coordinates (N x 3) of the voxels of ``mask`` (every ``step``-th along each axis)."""
    g = head.grid
    m = mask[::step, ::step, ::step]
    kz, jy, ix = np.nonzero(m)
    q = np.stack([g.x[::step][ix], g.y[::step][jy], g.z[::step][kz]], axis=1).astype(np.float64)
    return (pose.R @ (q * pose.scale[None, :]).T).T + pose.centre[None, :]


def render_acquisition(img_head: np.ndarray, head: H.Head, pose: Pose, geom: Geometry, thickness: float,
                       n_sub: int, order: int = 1) -> np.ndarray:
    """Sample the head intensity grid on the acquisition grid, averaging ``n_sub`` points across each slice's
    thickness (rectangular slice profile)."""
    A = geom.index_to_lps()
    inv = np.linalg.inv(pose.R * pose.scale[None, :])
    g = head.grid
    perm = [2, 1, 0]
    out = np.zeros(geom.shape, np.float32)
    for s in range(n_sub):
        shift = ((s + 0.5) / n_sub - 0.5) * thickness if n_sub > 1 else 0.0
        off = A[:, 3] + geom.normal * shift
        M = (inv @ A[:, :3]) / g.h
        o = ((inv @ (off - pose.centre)) - g.lo) / g.h
        out += ndimage.affine_transform(img_head, M[perm], o[perm], output_shape=geom.shape, order=order,
                                        mode="constant", cval=0.0, output=np.float32)
    if n_sub > 1:
        out /= n_sub
    return out


def bias_field(geom: Geometry, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative receive-coil field: exp of a random low-order polynomial over the FOV."""
    nz, ny, nx = geom.shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    c = rng.normal(0, 1, 10) * strength
    f = (c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * x * z
         + c[6] * (x * x - 0.33) + c[7] * (y * y - 0.33) + c[8] * (z * z - 0.33) + c[9] * x * y * z)
    return np.exp(f).astype(np.float32)


def rician(img: np.ndarray | np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a (possibly complex) image plus complex Gaussian noise of std ``sigma`` per channel."""
    re = np.real(img).astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32)
    im = np.imag(img).astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.sqrt(re * re + im * im)


def mr_header(seq: dict[str, Any], geo: dict[str, Any], pe_dir: str, rng: np.random.Generator,
              series_number: int) -> dict[str, Any]:
    plane_word = {"axial": rng.choice(["AX", "TRA", "axial"]), "sagittal": rng.choice(["SAG", "sag"]),
                  "coronal": rng.choice(["COR", "cor"])}[geo["plane"]]
    stem = seq["description_stem"]
    desc = f"{stem} {plane_word}" if rng.random() < 0.7 else f"{plane_word} {stem}"
    hdr = {
        "SeriesDescription": desc,
        "ProtocolName": desc,
        "SeriesNumber": series_number,
        "MagneticFieldStrength": f"{seq['field_t']:g}",
        "RepetitionTime": f"{seq['tr_ms']:g}",
        "EchoTime": f"{seq['te_ms']:g}",
        "FlipAngle": f"{seq['flip_deg']:g}",
        "MRAcquisitionType": seq["acq"],
        "ScanningSequence": SEQUENCES[seq["sequence"]]["seq"],
        "SliceThickness": f"{geo['slice_thickness_mm']:g}",
        "SpacingBetweenSlices": f"{geo['slice_thickness_mm'] + geo['slice_gap_mm']:g}",
        "InPlanePhaseEncodingDirection": pe_dir,
        "ImagingFrequency": f"{42.577 * seq['field_t']:.4f}",
    }
    if seq["ti_ms"]:
        hdr["InversionTime"] = f"{seq['ti_ms']:g}"
    bp = rng.choice(["HEAD", "BRAIN", None], p=[0.45, 0.35, 0.2])
    if bp:
        hdr["BodyPartExamined"] = str(bp)
    return hdr
