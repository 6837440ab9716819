"""Procedural whole-head label maps (brain, CSF, skull with diploe, scalp, fat, eyes, face, neck).

Head frame: LPS axes (x = patient left, y = posterior, z = superior), millimetres, origin near the centre
of the cerebrum, before the random head scale and pose are applied. Adult dimensions from standard
anatomy texts: cerebrum ~140 x 170 x 120 mm (L-R, A-P, S-I), cortex 2.5-3 mm, skull 5-9 mm with a diploic
(marrow) middle layer, scalp 5-8 mm (skin, subcutaneous fat, galea), eye globe ~24 mm across.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .fields import Grid, ellipsoid, ellipsoid_q, smooth_noise

# Labels
AIR, WM, GM, DGM, CSF, CGM, CWM, STEM, CORD, BONE, MARROW, MUSCLE, FAT, SKIN, VITREOUS, LENS, MUCOSA = range(17)
LABEL_NAMES = ["air", "wm", "gm", "deep_gm", "csf", "cerebellar_gm", "cerebellar_wm", "brainstem", "cord",
               "cortical_bone", "marrow", "muscle", "fat", "skin", "vitreous", "lens", "mucosa"]
BRAIN_LABELS = (WM, GM, DGM, CGM, CWM, STEM)


@dataclass
class Head:
    grid: Grid
    labels: np.ndarray  # uint8 [z, y, x]
    brain: np.ndarray  # bool: the anatomy coverage requires (cerebrum, cerebellum, brainstem above the foramen magnum)
    params: dict[str, Any] = field(default_factory=dict)


def draw_head_params(rng: np.random.Generator, neck: bool, brain_source: str) -> dict[str, Any]:
    u = rng.uniform
    return {
        "brain_source": brain_source,
        "neck": bool(neck),
        "csf_mm": round(u(1.0, 3.5), 2),  # subarachnoid CSF over the convexity (grows with atrophy)
        "ventricle_scale": round(u(0.7, 2.0), 2),
        "inner_table_mm": round(u(1.2, 2.2), 2),
        "diploe_mm": round(u(1.5, 5.0), 2),
        "outer_table_mm": round(u(1.2, 2.5), 2),
        "galea_mm": round(u(0.8, 2.0), 2),
        "fat_mm": round(u(1.5, 7.0), 2),
        "skin_mm": round(u(1.5, 3.0), 2),
        "temporalis_mm": round(u(3.0, 12.0), 2),
        "fold_wavelength_mm": round(u(10.0, 16.0), 2),
        "sulcus_depth_mm": round(u(8.0, 18.0), 2),
        "cortex_mm": round(u(2.2, 3.2), 2),
        "shape_noise": round(u(0.02, 0.05), 3),
        "deform_mm": round(u(1.0, 5.0), 2),
        "neck_width_mm": round(u(48.0, 66.0), 1),
        "face_depth_mm": round(u(45.0, 62.0), 1),
    }


def _procedural_brain(g: Grid, p: dict, rng: np.random.Generator, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Labels for cerebrum/cerebellum/brainstem + ventricles; returns (labels, required-brain mask)."""
    lab = np.zeros(g.shape, np.uint8)
    x, y, z = g.coords((slice(None), slice(None), slice(None)))
    X, Y, Z = x + dx, y + dy, z + dz  # deformed coordinates
    n_shape = smooth_noise(g.shape, g.h, 40.0, rng)
    # Cerebrum: egg-shaped ellipsoid (narrower frontally), flattened base, tentorium above the cerebellum.
    ax = 68.0 * (1.0 - 0.10 * np.clip(-Y / 85.0, 0, 1))
    q = (X / ax) ** 2 + (Y / 84.0) ** 2 + ((Z - 4.0) / 62.0) ** 2
    rn = np.sqrt(q) / (1.0 + p["shape_noise"] * n_shape)
    cer = rn < 1.0
    base = np.where(Y < -28, -14.0, np.where(Y > 22, -22.0 + 0.25 * (Y - 22) , -38.0 + 0.0 * X))
    temporal = (np.abs(X) > 22) & (Y > -35) & (Y < 25)
    base = np.where(temporal, -40.0, base)
    base = np.where((np.abs(X) <= 22) & (Y > -28) & (Y <= 22), -20.0, base)  # midline skull base / sella
    cer &= Z > base
    fissure = (np.abs(X) < 1.2 + 0.6 * np.abs(n_shape)) & (Z > -8)
    cer &= ~fissure
    # Cortical ribbon with folding: sulci are thin CSF sheets along the zero level set of band-passed noise.
    # depth below the cerebral surface: from the normalised radius (convexity) and from the base planes
    depth = np.minimum((1.0 - rn) * 62.0, Z - base)
    depth = np.where(fissure_near := (np.abs(X) < 12) & (Z > -8), np.minimum(depth, np.abs(X) - 1.2), depth)
    del fissure_near
    fold = smooth_noise(g.shape, g.h, p["fold_wavelength_mm"], rng)
    gy, gx = np.gradient(fold, g.h, axis=(1, 2))
    gz = np.gradient(fold, g.h, axis=0)
    dist_sulcus = np.abs(fold) / (np.sqrt(gx * gx + gy * gy + gz * gz) + 1e-3)
    sdepth = p["sulcus_depth_mm"]
    sulcus = cer & (dist_sulcus < 0.7) & (depth < sdepth)
    gm = cer & ((depth < p["cortex_mm"]) | ((dist_sulcus < 0.7 + p["cortex_mm"]) & (depth < sdepth + p["cortex_mm"])))
    lab[cer] = WM
    lab[gm] = GM
    lab[sulcus] = CSF
    # Deep grey matter (thalami, lentiform nuclei, caudate heads).
    for sx in (-1, 1):
        for c, r in (((10, 8, 2), (8, 15, 9)), ((23, -4, 0), (6, 13, 10)), ((12, -14, 9), (5, 8, 8))):
            lab[ellipsoid(g, (sx * c[0], c[1], c[2]), r)] = DGM
    # Ventricles (lateral bodies + frontal horns, third, fourth); size = atrophy.
    v = p["ventricle_scale"]
    for sx in (-1, 1):
        lab[ellipsoid(g, (sx * (6 + 2 * v), 2, 16), (3.0 * v, 28, 4.0 * v))] = CSF
        lab[ellipsoid(g, (sx * (7 + v), -20, 10), (3.0 * v, 8, 5.0 * v))] = CSF
        lab[ellipsoid(g, (sx * 26, 8, -18), (1.5 * v, 14, 2.0 * v))] = CSF  # temporal horns
    lab[ellipsoid(g, (0, 8, 0), (1.0 * v, 12, 8))] = CSF
    # Cerebellum (two hemispheres + vermis) with folia and a white-matter core.
    cq = np.minimum(ellipsoid_q(g, (-22, 52, -38), (30, 30, 22)), ellipsoid_q(g, (22, 52, -38), (30, 30, 22)))
    cq = np.minimum(cq, ellipsoid_q(g, (0, 50, -33), (12, 28, 20)))
    cbl = (cq < (1.0 + 0.5 * p["shape_noise"] * n_shape) ** 2) & (lab == 0)
    folia = np.abs(np.sin(np.pi * (Z + 0.35 * (Y - 52) + 2.0 * n_shape) / 3.2)) < 0.14
    cwm = cq < 0.30
    lab[cbl] = CGM
    lab[cbl & cwm] = CWM
    lab[cbl & folia & ~cwm & (cq > 0.45)] = CSF
    lab[ellipsoid(g, (0, 38, -34), (5, 4, 6))] = CSF  # fourth ventricle
    # Brainstem: tapered cylinder from the midbrain down to the foramen magnum (-62 mm).
    zs = g.z[:, None, None]
    ctr_y = 12.0 + (-zs) * 0.30  # leans posteriorly going down
    rad = np.interp(-zs, [-5, 15, 30, 45, 62, 200], [13, 13, 15, 10, 8, 8])
    stem = ((X ** 2 + (Y - ctr_y) ** 2) < rad ** 2) & (Z < 0) & (Z > -62)
    lab[stem & (lab == 0)] = STEM
    brain = np.isin(lab, BRAIN_LABELS) | (lab == CSF) & ndimage.binary_erosion(cer | cbl | stem, iterations=1)
    brain = ndimage.binary_closing(brain, iterations=2) | cer | cbl | stem
    return lab, brain


@functools.lru_cache(maxsize=1)
def _mni_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=2)
    wm_img = datasets.load_mni152_wm_template(resolution=2)
    return (np.asarray(gm_img.get_fdata(), np.float32), np.asarray(wm_img.get_fdata(), np.float32),
            np.asarray(gm_img.affine, float))


def _mni_brain(g: Grid, rng: np.random.Generator, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Brain labels from nilearn's MNI152 GM/WM probability templates (shipped with nilearn, no download)."""
    gm, wm, affine = _mni_templates()
    inv = np.linalg.inv(affine)
    x, y, z = g.coords((slice(None), slice(None), slice(None)))
    # head frame (LPS, centred) -> MNI RAS mm -> template voxel
    xr = -(x + dx)
    yr = -(y + dy) - 17.0
    zr = (z + dz) + 10.0
    xr, yr, zr = np.broadcast_arrays(xr, yr, zr)
    pts = np.stack([xr.ravel(), yr.ravel(), zr.ravel(), np.ones(xr.size, np.float32)])
    ijk = (inv @ pts)[:3]
    gmv = ndimage.map_coordinates(gm, ijk, order=1, cval=0.0).reshape(g.shape)
    wmv = ndimage.map_coordinates(wm, ijk, order=1, cval=0.0).reshape(g.shape)
    lab = np.zeros(g.shape, np.uint8)
    tissue = (gmv + wmv) > 0.35
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=3))
    lab[brain] = CSF  # sulcal/ventricular CSF where neither GM nor WM
    lab[tissue & (gmv >= wmv)] = GM
    lab[tissue & (wmv > gmv)] = WM
    # The template's posterior fossa is cerebellum; keep its tissue labels distinct for rendering variety.
    post = (y + dy > 25) & (z + dz < -20)
    lab[(lab == GM) & post] = CGM
    lab[(lab == WM) & post] = CWM
    return lab, brain


def build_head(rng: np.random.Generator, p: dict[str, Any], h: float = 1.3) -> Head:
    """Label map of a whole head on a grid of spacing ``h`` mm (head frame, unscaled)."""
    zlo = -185.0 if p["neck"] else -125.0
    g = Grid((-92.0, -122.0, zlo), (92.0, 112.0, 98.0), h)
    dfx = smooth_noise(g.shape, h, 60.0, rng) * p["deform_mm"]
    dfy = smooth_noise(g.shape, h, 60.0, rng) * p["deform_mm"]
    dfz = smooth_noise(g.shape, h, 60.0, rng) * p["deform_mm"]
    if p["brain_source"] == "mni152":
        lab, brain = _mni_brain(g, rng, dfx, dfy, dfz)
    else:
        lab, brain = _procedural_brain(g, p, rng, dfx, dfy, dfz)
    del dfx, dfy, dfz
    # Extra-cerebral layers by distance from the brain surface, each thickness modulated by smooth noise.
    d_b = ndimage.distance_transform_edt(~brain).astype(np.float32) * h
    n1 = smooth_noise(g.shape, h, 30.0, rng)
    x, y, z = g.coords((slice(None), slice(None), slice(None)))
    t_csf = p["csf_mm"] * (1 + 0.3 * n1)
    t1 = t_csf + p["inner_table_mm"]
    t2 = t1 + p["diploe_mm"] * np.clip(1 + 0.35 * n1, 0.3, 2)
    temporal = np.clip(1.0 - (np.abs(np.abs(x) - 75) / 20.0), 0, 1) * np.clip(1 - np.abs(z - 5) / 35.0, 0, 1)
    t2 = t2 - temporal * 0.7 * p["diploe_mm"]  # thin temporal squama
    t3 = t2 + p["outer_table_mm"]
    t4 = t3 + p["galea_mm"] + temporal * p["temporalis_mm"]
    cranium_outer = t4 + p["fat_mm"] + p["skin_mm"]
    outside = lab == 0
    lab[outside & (d_b < t_csf)] = CSF
    lab[outside & (d_b >= t_csf) & (d_b < t1)] = BONE
    lab[outside & (d_b >= t1) & (d_b < t2)] = MARROW
    lab[outside & (d_b >= t2) & (d_b < t3)] = BONE
    lab[outside & (d_b >= t3) & (d_b < t4)] = MUSCLE
    cranium = d_b < cranium_outer
    lab[outside & cranium & (d_b >= t4)] = FAT  # skin is laid from the outer surface below
    del n1, t_csf, t1, t2, t3, t4
    # Face: soft tissue below the forehead, nose, sinuses, orbits, mandible.
    fd = p["face_depth_mm"]
    face = ellipsoid(g, (0, -50, -58), (62, fd + 12, 58)) & (g.z[:, None, None] < -8)
    nose = ellipsoid(g, (0, -100, -48), (12, 22, 24)) & (g.y[None, :, None] < -82)
    face |= nose
    head = cranium | face
    if p["neck"]:
        nw = p["neck_width_mm"]
        zz = g.z[:, None, None]
        neck = (((x / nw) ** 2 + ((y - 12) / (nw + 4)) ** 2) < 1.0) & (zz < -55)
        head |= neck
    head = ndimage.binary_closing(head, iterations=2)
    new = head & (lab == 0) & ~cranium
    lab[new] = MUSCLE
    # Eyes and orbits (globe ~24 mm, lens at the front, orbital fat behind and around).
    for sx in (-1, 1):
        c = (sx * 32.0, -72.0, -28.0)
        orb = ellipsoid(g, (c[0], c[1] + 12, c[2]), (19, 26, 17)) & ~np.isin(lab, BRAIN_LABELS + (CSF,))
        rim = orb & ~ndimage.binary_erosion(orb, iterations=2)
        lab[orb] = FAT
        lab[rim & (g.y[None, :, None] > c[1] - 5)] = BONE
        lab[ellipsoid(g, c, (12, 12, 12))] = VITREOUS
        lab[ellipsoid(g, (c[0], c[1] - 9.5, c[2]), (4.5, 2.0, 4.5))] = LENS
        lab[ellipsoid(g, (sx * 25.0, -60.0, -55.0), (13, 15, 14))] = AIR  # maxillary sinus
    lab[ellipsoid(g, (0, -78, -46), (8, 18, 20))] = AIR  # nasal cavity
    lab[ellipsoid(g, (0, -78, -46), (10, 20, 22)) & (lab == MUSCLE)] = MUCOSA
    lab[ellipsoid(g, (0, -55, 8), (22, 10, 10)) & (lab == MARROW)] = AIR  # frontal sinus
    mand = ellipsoid(g, (0, -40, -100), (52, 58, 11)) & ~ellipsoid(g, (0, -40, -100), (44, 50, 8))
    lab[mand & (g.y[None, :, None] < -5) & head] = BONE
    if p["neck"]:
        # Vertebral column with marrow, spinal canal CSF and cord; airway.
        zz = g.z[:, None, None]
        low = zz < -66
        vert = ((x ** 2 + (y - 22) ** 2) < 16 ** 2) & low
        canal = ((x ** 2 + (y - 32) ** 2) < 8 ** 2) & (zz < -58)
        lab[vert] = MARROW
        lab[vert & ~ndimage.binary_erosion(vert, iterations=1)] = BONE
        lab[canal] = CSF
        lab[((x ** 2 + (y - 32) ** 2) < 5 ** 2) & (zz < -58)] = CORD
        lab[((x ** 2 + (y + 12) ** 2) < 8 ** 2) & (zz < -80)] = AIR  # pharynx / trachea
    else:
        zz = g.z[:, None, None]
        lab[((x ** 2 + (y - 32) ** 2) < 5 ** 2) & (zz < -58) & head] = CORD
    # Skin and subcutaneous fat from the outer surface inwards (face and neck too).
    d_in = ndimage.distance_transform_edt(head).astype(np.float32) * h
    soft = np.isin(lab, (MUSCLE, FAT, MUCOSA, MARROW))
    lab[head & soft & (d_in < p["skin_mm"] + p["fat_mm"])] = FAT
    lab[head & (d_in < p["skin_mm"]) & ~np.isin(lab, (VITREOUS, LENS))] = SKIN
    lab[~head] = AIR
    # Required anatomy: brain above the foramen magnum (-62 mm in the head frame).
    brain = brain & np.isin(lab, BRAIN_LABELS + (CSF,)) & (g.z[:, None, None] > -62.0)
    return Head(grid=g, labels=lab, brain=brain, params=p)
