"""Domain-randomised whole heads (MR): label maps with extra-cerebral layers, sampled SynthSeg-style.

The motion and coverage models of sessions 1-6 saw one skull-stripped template (MNI152 2009a), so a real head,
which always has scalp, skull and fat, looked "moved" to them (issue 19). This module builds *heads*:

1. **Labels** (:func:`head_labels`): the MNI152 GM/WM/brain masks give the brain; every layer outside it is
   procedural, with a thickness that varies smoothly over the head and between heads: subarachnoid CSF,
   skull (inner and outer table, diploe), galea/muscle, subcutaneous fat and skin; eyes with orbital fat,
   nasal cavity and sinuses (air), a face/jaw block and a neck with vertebral column, cord, airway and fat.
2. **Contrast** (:func:`sample_intensities`): an intensity per label, from literature-shaped priors for
   T1 (MPRAGE, spin echo), T2, PD and FLAIR with a wide jitter, or (``random_contrast_rate``) drawn uniformly
   for every label as SynthSeg does (Billot et al., Medical Image Analysis 86:102789, 2023,
   https://doi.org/10.1016/j.media.2023.102789), plus within-tissue texture and partial volume.
3. **Geometry**: random affine (head size 0.85-1.2, pose) and elastic deformation, slice orientation, voxel
   size (3D 1-2 mm, 2D 3-6 mm slices) and field of view (neck in or out, tight crops with a few mm of air above
   the scalp) are drawn by :mod:`scanqc.datasets.generate`, which also applies the artefacts in the
   acquisition's own geometry (phase-encode axis written to ``InPlanePhaseEncodingDirection``).

Array convention: the datasets' canonical storage (:data:`scanqc.datasets.geometry.CANONICAL_DIRECTION`):
axis 0 inferior -> superior, axis 1 anterior -> posterior, axis 2 right -> left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scanqc.volume import Volume

# Label grid. 3 mm: the models see ~3.5-4 mm voxels, and on two shared cores a 2 mm grid made ~8 s per case (3x
# the voxels for the deformation, resampling and k-space steps) without changing what reaches a model.
BASE_MM = 3.0
# Label ids of a head label map (0 = air outside the head).
LABELS: dict[str, int] = {
    "air": 0, "wm": 1, "gm": 2, "csf": 3, "bone": 4, "diploe": 5, "muscle": 6, "fat": 7, "skin": 8,
    "vitreous": 9, "sinus_air": 10, "cord": 11, "marrow": 12, "vessel": 13,
}
# Relative tissue signal per contrast (white matter of T1 ~0.8). Shapes from standard references of relaxation
# behaviour (e.g. Bernstein, King & Zhou, Handbook of MRI Pulse Sequences, 2004; Haacke et al., Magnetic
# Resonance Imaging, 1999): fat bright on T1/PD and fairly bright on fast-spin-echo T2; cortical bone and air dark
# everywhere; CSF dark on T1 and FLAIR, bright on T2/PD; fatty marrow (diploe, vertebrae) follows fat.
CONTRASTS: dict[str, dict[str, float]] = {
    "t1_mprage": {"wm": 0.80, "gm": 0.50, "csf": 0.12, "bone": 0.03, "diploe": 0.65, "muscle": 0.40, "fat": 0.95,
                  "skin": 0.50, "vitreous": 0.10, "sinus_air": 0.01, "cord": 0.75, "marrow": 0.70, "vessel": 0.30},
    "t1_se": {"wm": 0.75, "gm": 0.58, "csf": 0.20, "bone": 0.04, "diploe": 0.80, "muscle": 0.45, "fat": 1.00,
              "skin": 0.55, "vitreous": 0.15, "sinus_air": 0.01, "cord": 0.70, "marrow": 0.85, "vessel": 0.10},
    "t2": {"wm": 0.35, "gm": 0.50, "csf": 1.00, "bone": 0.03, "diploe": 0.55, "muscle": 0.25, "fat": 0.70,
           "skin": 0.45, "vitreous": 0.95, "sinus_air": 0.01, "cord": 0.40, "marrow": 0.55, "vessel": 0.05},
    "pd": {"wm": 0.65, "gm": 0.80, "csf": 0.90, "bone": 0.05, "diploe": 0.75, "muscle": 0.50, "fat": 0.90,
           "skin": 0.60, "vitreous": 0.90, "sinus_air": 0.01, "cord": 0.70, "marrow": 0.80, "vessel": 0.10},
    "flair": {"wm": 0.55, "gm": 0.75, "csf": 0.08, "bone": 0.03, "diploe": 0.70, "muscle": 0.40, "fat": 0.85,
              "skin": 0.50, "vitreous": 0.10, "sinus_air": 0.01, "cord": 0.60, "marrow": 0.70, "vessel": 0.05},
}
CONTRAST_NAMES = tuple(CONTRASTS)
# The DICOM description and timing a site would send for each contrast (written by the generator).
SEQUENCE_HEADERS: dict[str, dict[str, object]] = {
    "t1_mprage": {"SeriesDescription": "T1 MPRAGE", "RepetitionTime": 2300, "EchoTime": 2.98, "InversionTime": 900,
                  "ScanningSequence": ["GR", "IR"], "FlipAngle": 9},
    "t1_se": {"SeriesDescription": "T1 SE", "RepetitionTime": 550, "EchoTime": 12.0, "ScanningSequence": ["SE"],
              "FlipAngle": 90},
    "t2": {"SeriesDescription": "T2 TSE", "RepetitionTime": 5000, "EchoTime": 95.0, "ScanningSequence": ["SE"],
           "FlipAngle": 150},
    "pd": {"SeriesDescription": "PD TSE", "RepetitionTime": 3000, "EchoTime": 12.0, "ScanningSequence": ["SE"],
           "FlipAngle": 150},
    "flair": {"SeriesDescription": "T2 FLAIR", "RepetitionTime": 9000, "EchoTime": 90.0, "InversionTime": 2500,
              "ScanningSequence": ["SE", "IR"], "FlipAngle": 150},
}


@dataclass
class Head:
    """A head label map on the 2 mm canonical grid, with the soft brain tissue maps and the required mask."""

    labels: np.ndarray  # uint8 (z, y, x)
    gm: np.ndarray  # float32 soft GM share inside the brain (partial volume)
    wm: np.ndarray
    required: np.ndarray  # bool: whole brain from the vertex to the bottom of the cerebellum
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    params: dict


def _upsample_matrix(n: int, g: int) -> np.ndarray:
    """(n, g) linear interpolation from ``g`` coarse samples spanning the axis onto ``n`` voxels."""
    pos = np.linspace(0, g - 1, n)
    lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
    w = np.zeros((n, g), np.float32)
    w[np.arange(n), lo] = 1 - (pos - lo)
    w[np.arange(n), lo + 1] = pos - lo
    return w


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Smooth random field in [-1, 1]: coarse Gaussian noise, linearly up-sampled axis by axis (three small
    matrix products: ~10 ms, where ``ndimage.zoom`` took ~0.4 s on a head grid)."""
    small = tuple(max(4, int(np.ceil(n / max(sigma_vox, 1.0)))) for n in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 0.7)
    for ax, (n, g) in enumerate(zip(shape, small)):
        f = np.moveaxis(np.tensordot(f, _upsample_matrix(n, g), axes=([ax], [1])), -1, ax)
    return (f / max(float(np.abs(f).max()), 1e-6)).astype(np.float32)


def _ellipsoid(shape: tuple[int, ...], centre_vox: np.ndarray, radii_vox: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = ((zz - centre_vox[0]) / radii_vox[0]) ** 2 + ((yy - centre_vox[1]) / radii_vox[1]) ** 2 \
        + ((xx - centre_vox[2]) / radii_vox[2]) ** 2
    return r <= 1.0


def head_labels(rng: np.random.Generator) -> Head:
    """One randomised head: MNI152 brain plus procedural extra-cerebral anatomy (module docstring, step 1)."""
    from scanqc.datasets.base import mni_brain_mask, mni_tissue, required_brain_mask

    s = BASE_MM
    brain0 = mni_brain_mask(s)
    gm0, wm0 = mni_tissue("gm", s).array, mni_tissue("wm", s).array
    req0 = required_brain_mask(s)
    # Room for the neck below the cerebellum, the face in front and the scalp around.
    pad_inf = int(rng.uniform(40, 70) / s)
    pad = [(pad_inf, 12), (14, 10), (10, 10)]
    brain = np.pad(brain0, pad)
    gm, wm, req = (np.pad(a, pad) for a in (gm0, wm0, req0))
    shape = brain.shape
    mm = float(s)
    out = np.zeros(shape, np.uint8)

    # Distance (mm) outside the brain; the layers' thickness varies smoothly over the head.
    d = ndimage.distance_transform_edt(~brain) * mm

    def thickness(lo: float, hi: float, var: float = 0.35) -> np.ndarray:
        base = float(rng.uniform(lo, hi))
        return base * (1.0 + var * _smooth_field(rng, shape, 12.0))

    t_csf, t_skull = thickness(1.0, 4.0), thickness(4.0, 9.0, 0.3)
    t_galea, t_fat, t_skin = thickness(1.5, 4.0), thickness(1.0, 7.0, 0.5), thickness(1.0, 2.5, 0.2)
    e1 = t_csf
    e2 = e1 + t_skull
    e3, e4 = e2 + t_galea, e2 + t_galea + t_fat
    e5 = e4 + t_skin
    table = np.clip(t_skull * float(rng.uniform(0.2, 0.35)), 1.0, None)  # cortical table thickness
    zc = np.where(brain.any(axis=(1, 2)))[0]
    yc = np.where(brain.any(axis=(0, 2)))[0]
    xc = np.where(brain.any(axis=(0, 1)))[0]
    z_bot = int(zc[0])
    y_front, y_back = int(yc[0]), int(yc[-1])
    x_mid = (xc[0] + xc[-1]) / 2.0
    cranial = d <= e5
    # The cranial shells stop at the skull base: below the lowest brain slice there are face and neck instead.
    zz = np.arange(shape[0])[:, None, None]
    out[(d > e4) & (d <= e5)] = LABELS["skin"]
    out[(d > e3) & (d <= e4)] = LABELS["fat"]
    out[(d > e2) & (d <= e3)] = LABELS["muscle"]
    skull = (d > e1) & (d <= e2)
    out[skull] = LABELS["bone"]
    out[skull & (d > e1 + table) & (d < e2 - table)] = LABELS["diploe"]
    out[(d > 0) & (d <= e1)] = LABELS["csf"]

    # Neck: an elliptical cylinder below the posterior cranial fossa, from the cerebellum down to the grid bottom.
    y_neck = y_front + (y_back - y_front) * float(rng.uniform(0.5, 0.62))
    r_lr = float(rng.uniform(50, 68)) / mm
    r_ap = float(rng.uniform(45, 60)) / mm
    yy, xx = np.ogrid[: shape[1], : shape[2]]
    ell = ((yy - y_neck) / r_ap) ** 2 + ((xx - x_mid) / r_lr) ** 2
    z_neck_top = z_bot + int(rng.uniform(5, 20) / mm)
    neck = (zz <= z_neck_top) & (ell <= 1.0)[None]
    neck_fat = neck & (ell >= (1.0 - float(rng.uniform(3, 10)) / mm / r_lr) ** 2)[None]
    # Face/jaw: an ellipsoid in front of the neck below the frontal lobes.
    frontal = brain[:, : y_front + int(25 / mm)].any(axis=(1, 2))
    z_orbit = int(np.where(frontal)[0][0]) + int(rng.uniform(2, 10) / mm) if frontal.any() else z_bot
    face_c = np.array([z_orbit - float(rng.uniform(25, 40)) / mm, y_front + float(rng.uniform(18, 28)) / mm, x_mid])
    face_r = np.array([float(rng.uniform(50, 65)), float(rng.uniform(38, 48)), float(rng.uniform(45, 58))]) / mm
    face = _ellipsoid(shape, face_c, face_r)
    lower = (neck | face) & (out == 0) & ~brain
    out[lower] = LABELS["muscle"]
    # Blend the cranium, face and neck into one outline (soft tissue fills the concave joins).
    body = ndimage.gaussian_filter((out > 0).astype(np.float32) + brain, 6.0 / mm) > 0.3
    out[body & (out == 0) & ~brain] = LABELS["muscle"]
    body_fat = body & ~ndimage.binary_erosion(body, iterations=max(1, int(rng.uniform(2, 6) / mm)))
    out[body_fat & (out == LABELS["muscle"]) & (zz < z_bot + 4)] = LABELS["fat"]
    out[(neck_fat | (face & ~_ellipsoid(shape, face_c, face_r - 5.0 / mm))) & (out == LABELS["muscle"])] = \
        LABELS["fat"]
    # Vertebral column with marrow, the cord continuing the brainstem, the airway in front of it.
    y_spine = y_neck + float(rng.uniform(0, 8)) / mm
    r_vert = float(rng.uniform(12, 17)) / mm
    col = ((yy - y_spine) / r_vert) ** 2 + ((xx - x_mid) / r_vert) ** 2 <= 1.0
    cord = ((yy - y_spine) / (r_vert * 0.4)) ** 2 + ((xx - x_mid) / (r_vert * 0.4)) ** 2 <= 1.0
    below = zz < z_bot + 2
    out[below & col[None] & neck] = LABELS["marrow"]
    out[below & (col & ~ndimage.binary_erosion(col, iterations=1))[None] & neck] = LABELS["bone"]
    out[(zz < z_bot + 6) & cord[None] & (neck | brain)] = LABELS["cord"]
    y_air = y_spine - r_vert - float(rng.uniform(8, 16)) / mm
    r_air = float(rng.uniform(5, 9)) / mm
    airway = ((yy - y_air) / r_air) ** 2 + ((xx - x_mid) / (r_air * 1.4)) ** 2 <= 1.0
    out[(zz < z_bot - 4) & airway[None] & (neck | face)] = LABELS["sinus_air"]
    # Carotid/jugular vessels beside the airway (dark or bright depending on the sequence: a random label).
    for side in (-1, 1):
        v = ((yy - y_air) / (r_air * 0.7)) ** 2 + ((xx - x_mid - side * float(rng.uniform(20, 28)) / mm)
                                                    / (r_air * 0.7)) ** 2 <= 1.0
        out[(zz < z_bot) & v[None] & neck] = LABELS["vessel"]
    # Eyes (vitreous) with orbital fat, in front of the frontal lobes at the level of their base.
    r_eye = float(rng.uniform(11, 12.5)) / mm
    sep = float(rng.uniform(28, 34)) / mm
    for side in (-1, 1):
        c = np.array([z_orbit, y_front - float(rng.uniform(0, 6)) / mm, x_mid + side * sep])
        orbit = _ellipsoid(shape, c, np.full(3, r_eye + 5.0 / mm)) & ~brain
        out[orbit & (out != LABELS["vitreous"])] = LABELS["fat"]
        out[_ellipsoid(shape, c, np.full(3, r_eye))] = LABELS["vitreous"]
    # Nasal cavity / maxillary sinuses and frontal sinus (air inside the face).
    nose_c = np.array([z_orbit - float(rng.uniform(15, 25)) / mm, y_front - float(rng.uniform(0, 10)) / mm, x_mid])
    out[_ellipsoid(shape, nose_c, np.array([20, 15, float(rng.uniform(12, 22))]) / mm) & (out > 0)
        & ~brain] = LABELS["sinus_air"]
    if rng.uniform() < 0.7:
        fs = np.array([z_orbit + float(rng.uniform(8, 16)) / mm, y_front - 3.0 / mm, x_mid])
        out[_ellipsoid(shape, fs, np.array([6, 4, 10]) * float(rng.uniform(0.6, 1.3)) / mm) & skull] = \
            LABELS["sinus_air"]
    # Brain last: soft GM/WM shares keep the cortex's partial volume.
    out[brain] = LABELS["csf"]
    tissue = brain & ((gm + wm) > 0.3)
    out[tissue] = np.where(wm[tissue] >= gm[tissue], LABELS["wm"], LABELS["gm"])
    del cranial
    origin = (-pad[0][0] * mm, -pad[1][0] * mm, -pad[2][0] * mm)  # informational: relative to the MNI grid
    params = {"base": "MNI152_2009a brain + procedural layers", "neck_pad_mm": round(pad_inf * mm, 1),
              "skull_mm": round(float(np.median(t_skull)), 2), "fat_mm": round(float(np.median(t_fat)), 2)}
    return Head(out, np.where(brain, gm, 0).astype(np.float32), np.where(brain, wm, 0).astype(np.float32),
                req.astype(bool), (mm, mm, mm), origin, params)


def sample_intensities(rng: np.random.Generator, random_contrast_rate: float = 0.25) -> tuple[str, dict[str, float]]:
    """(contrast name, signal per label): a prior with +-25 % jitter, or every label uniform (SynthSeg)."""
    name = str(rng.choice(CONTRAST_NAMES))
    if rng.uniform() < random_contrast_rate:
        means = {k: float(rng.uniform(0.0, 1.0)) for k in CONTRASTS[name]}
        means["sinus_air"] = float(rng.uniform(0.0, 0.05))
        means["bone"] = float(rng.uniform(0.0, 0.15))  # cortical bone and air give no MR signal in any contrast
        return name + "_random", means
    means = {k: float(v * rng.uniform(0.8, 1.25)) for k, v in CONTRASTS[name].items()}
    return name, means


def render(head: Head, means: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Image of the label map: label means, brain partial volume, within-tissue texture, a slight PSF blur."""
    lab = head.labels
    lut = np.zeros(max(LABELS.values()) + 1, np.float32)
    for k, i in LABELS.items():
        lut[i] = means.get(k, 0.0)
    img = lut[lab]
    brain = lab == LABELS["wm"]
    brain |= lab == LABELS["gm"]
    # Partial volume inside the brain: mix GM, WM and CSF by the template's soft shares.
    csf_share = np.clip(1.0 - head.gm - head.wm, 0, 1)
    soft = head.gm * means["gm"] + head.wm * means["wm"] + csf_share * means["csf"]
    inside = (head.gm + head.wm) > 0
    img[inside] = soft[inside]
    # Within-tissue texture (a few % of the signal, smooth at the 2-6 mm scale), not in air.
    tex = float(rng.uniform(0.01, 0.06)) * _smooth_field(rng, lab.shape, float(rng.uniform(1.0, 3.0)))
    img = img * (1.0 + tex) * (lab > 0) + img * (lab == 0)
    img = ndimage.gaussian_filter(img, float(rng.uniform(0.3, 0.7)))
    return np.clip(img, 0, None).astype(np.float32)


def head_volume(rng: np.random.Generator, random_contrast_rate: float = 0.25
                ) -> tuple[Volume, np.ndarray, np.ndarray, dict]:
    """A rendered head on the 2 mm canonical grid: (volume in [0, ~1], required brain mask, head mask, params)."""
    from scanqc.datasets.geometry import CANONICAL_DIRECTION

    head = head_labels(rng)
    contrast, means = sample_intensities(rng, random_contrast_rate)
    img = render(head, means, rng)
    img /= max(float(np.percentile(img[head.labels > 0], 99)), 1e-6)
    vol = Volume(img, head.spacing, head.origin, CANONICAL_DIRECTION.copy(), "MR")
    params = {**head.params, "contrast": contrast, "means": {k: round(v, 3) for k, v in means.items()}}
    return vol, head.required, head.labels > 0, params


# ----------------------------------------------------------------------------- acquisition
#: Ranges of the training generator's own held-out variant differ from training where it matters (pose, size,
#: elastic), so its test draws are not the training heads again; the blind cross-simulator is the real test.
HEAD_VARIANTS: dict[str, dict[str, list[tuple[float, float]] | bool]] = {
    "train": {"rotation_deg": [(0.0, 12.0)], "scale": [(0.85, 1.2)], "elastic_mm": [(0.0, 3.5)], "flip_lr": False},
    "test": {"rotation_deg": [(12.0, 18.0)], "scale": [(0.82, 0.87), (1.17, 1.22)], "elastic_mm": [(3.5, 5.0)],
             "flip_lr": True},
}
ORIENTATIONS = {  # (array order from canonical, flips): slices stacked along axis 0 (geometry.reorient)
    "axial": ((0, 1, 2), (True, False, False)),
    "sagittal": ((2, 0, 1), (False, True, False)),
    "coronal": ((1, 0, 2), (False, True, False)),
}
PE_AXES = {"COL": 1, "ROW": 2}  # InPlanePhaseEncodingDirection -> array axis of (slice, row, column)


def _extent(mask: np.ndarray, axis: int) -> tuple[int, int]:
    idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return (int(idx[0]), int(idx[-1])) if idx.size else (0, mask.shape[axis] - 1)


def acquire_head(rng: np.random.Generator, variant: str = "train", artefact=None, crop_required: bool = True,
                 superior_air_mm: float | None = None, random_contrast_rate: float = 0.25,
                 noise_scale: float = 1.0) -> tuple[Volume, np.ndarray, dict]:
    """Head -> deformation -> slice orientation and voxel size -> field of view -> bias -> artefact -> noise.

    ``artefact(array, spacing, pe_axis, acquisition, brain_mask) -> (array, info)`` runs on the acquisition grid
    before noise, with the phase-encode axis of this acquisition. The field of view never cuts the required
    brain when ``crop_required``; it may cut the nose, the ears or the neck (as real ones do); ``superior_air_mm``
    fixes the air above the scalp (else drawn, 1-30 mm); ``random_contrast_rate`` is the share of heads whose
    label intensities are all drawn uniformly (:func:`sample_intensities`); ``noise_scale`` multiplies the drawn
    noise level (below 1: denoised or deep-learning reconstructions, averaged scans). Returns the
    volume (MR scanner units), the required-brain mask on its grid and the parameters (provenance).
    """
    from scanqc.datasets.bias_field import apply_bias_field, random_bias_coefficients
    from scanqc.datasets.deform import deform_onto, random_deformation
    from scanqc.datasets.geometry import crop_pad, crop_pad_array, reorient, reorient_array, superior_axis
    from scanqc.datasets.intensity import apply_gamma, apply_scale, random_scale
    from scanqc.datasets.noise import apply_rician_noise
    from scanqc.datasets.variants import pick_range

    v = HEAD_VARIANTS[variant]
    vol, req, hmask, params = head_volume(rng, random_contrast_rate)
    d = random_deformation(rng, pick_range(rng, v["rotation_deg"]), pick_range(rng, v["scale"]),  # type: ignore[arg-type]
                           bool(v["flip_lr"]), pick_range(rng, v["elastic_mm"]))  # type: ignore[arg-type]
    orientation = str(rng.choice(list(ORIENTATIONS), p=[0.5, 0.25, 0.25]))
    order, flips = ORIENTATIONS[orientation]
    acquisition = "3d" if rng.uniform() < 0.5 else "2d"
    # Voxels: 3D 2.4-3.2 mm, 2D 2.0-3.0 mm in-plane with 3-6 mm slices. The models see ~3.5-4 mm voxels (64^3 over
    # the field of view), so finer acquisitions cost generation time (k-space, resampling) without changing what
    # reaches them beyond the noise level, which is drawn over a wide range anyway.
    if acquisition == "3d":
        p = float(rng.uniform(2.4, 3.2))
        sp = (round(p * float(rng.uniform(1.0, 1.2)), 3), round(p, 3), round(p, 3))
    else:
        p = float(rng.uniform(2.0, 3.0))
        sp = (round(float(rng.uniform(3.0, 6.0)), 3), round(p, 3), round(p, 3))
    # Deformation and voxel size in one interpolation, on the canonical axes (acquisition axis a is canonical
    # axis order[a]); one label image carries both masks (head 1, required brain 2).
    canon_sp = [0.0, 0.0, 0.0]
    for a, c in enumerate(order):
        canon_sp[c] = sp[a]
    img, lab = deform_onto([vol.array, hmask.astype(np.float32) + req], d, vol.spacing, canon_sp)
    ratio = np.asarray(canon_sp) / np.asarray(vol.spacing)
    origin = np.asarray(vol.origin) + vol.direction @ ((ratio - 1) / 2.0 * np.asarray(vol.spacing))
    vol = Volume(img, tuple(canon_sp), tuple(origin), vol.direction.copy(), "MR")
    vol = reorient(vol, order, flips)
    lab = reorient_array(lab, order, flips)
    req_a, head_a = lab > 1.5, lab > 0.5
    # Field of view: air margins around the head (negative: the FOV cuts the face/neck, never the brain).
    ax_sup, sign = superior_axis(vol)
    before, after = [0, 0, 0], [0, 0, 0]
    fov: dict[str, list[float]] = {}
    for ax in range(3):
        h0, h1 = _extent(head_a, ax)
        b0, b1 = _extent(req_a, ax)
        s_mm = vol.spacing[ax]
        m_lo, m_hi = (float(rng.uniform(-8.0, 30.0)) for _ in range(2))
        if ax == ax_sup:
            # Superior end: tight (a few mm of air above the scalp) to generous; inferior end: anywhere from
            # just below the cerebellum to the whole neck.
            sup_air = float(rng.uniform(1.0, 30.0)) if rng.uniform() < 0.7 else float(rng.uniform(1.0, 8.0))
            sup_air = sup_air if superior_air_mm is None else float(superior_air_mm)
            inf_mm = float(rng.uniform(-80.0, 20.0))
            m_lo, m_hi = (inf_mm, sup_air) if sign > 0 else (sup_air, inf_mm)
        lo = h0 - round(m_lo / s_mm)
        hi = h1 + round(m_hi / s_mm)
        if crop_required:
            lo, hi = min(lo, b0 - max(1, int(np.ceil(3.0 / s_mm)))), max(hi, b1 + max(1, int(np.ceil(3.0 / s_mm))))
        before[ax], after[ax] = -lo, hi - (vol.shape[ax] - 1)
        fov[f"axis{ax}_mm"] = [round(-before[ax] * s_mm, 1), round(after[ax] * s_mm, 1)]
    vol = crop_pad(vol, before, after, 0.0)
    req_a = crop_pad_array(req_a, before, after, False)
    head_a = crop_pad_array(head_a, before, after, False)
    coef = random_bias_coefficients(rng, 3, (0.0, float(rng.uniform(0.05, 0.4))))
    arr = apply_bias_field(vol.array, coef)
    pe_dir = str(rng.choice(list(PE_AXES)))
    info: dict = {}
    if artefact is not None:
        arr, info = artefact(arr, vol.spacing, PE_AXES[pe_dir], acquisition, req_a)
    wm_level = float(np.percentile(arr[head_a], 95)) if head_a.any() else 1.0
    sigma = wm_level * float(rng.uniform(0.008, 0.06)) * noise_scale  # SNR ~ 15-125 at the brightest tissue
    arr = apply_rician_noise(arr, sigma, rng)
    background = "noise"
    if rng.uniform() < 0.12:
        # Some reconstructions zero the air outside the head (vendor background masking).
        keep = ndimage.binary_dilation(head_a, iterations=2)
        arr = np.where(keep, arr, arr * float(rng.uniform(0.0, 0.1)))
        background = "masked"
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    scale = random_scale(rng)
    arr = apply_scale(apply_gamma(arr, gamma), scale)
    vol = vol.with_array(arr.astype(np.float32))
    vol.modality = "MR"
    if "artefact_rms" in info:
        info["artefact_to_noise"] = round(info["artefact_rms"] / sigma, 4)
        info["artefact_rms"] = round(info["artefact_rms"], 6)
    params.update({"deformation": d.to_dict(), "orientation": orientation, "spacing_mm": list(sp),
                   "mr_acquisition": acquisition, "phase_encode": pe_dir, "fov_mm": fov, "background": background,
                   "rician_sigma_rel": round(sigma / max(wm_level, 1e-9), 4), "gamma": round(gamma, 3),
                   "intensity_scale": round(scale, 1), "bias_coefficients_max": round(max(abs(c) for c in coef), 3),
                   "artefact": info})
    return vol, req_a, params


def head_artefact(kind: str, severity: float, rng: np.random.Generator):
    """The artefact callback of :func:`acquire_head`: rigid k-space motion or periodic ghosting along the PE axis."""
    from scanqc.datasets import motion as motion_mod
    from scanqc.datasets.ghosting import simulate_ghosting

    def run(arr: np.ndarray, spacing, pe_axis: int, acquisition: str, brain: np.ndarray):
        if kind == "none" or severity == 0:
            return arr, {"kind": "none", "severity": 0.0}
        if kind == "rigid":
            # motion.py phase-encodes along axis 1 (reads out along 2): swap for a ROW phase-encode direction.
            a = arr if pe_axis == 1 else np.ascontiguousarray(np.swapaxes(arr, 1, 2))
            sp = tuple(spacing) if pe_axis == 1 else (spacing[0], spacing[2], spacing[1])
            out, p = motion_mod.simulate_motion(a, severity, rng, sp, acquisition=acquisition)  # type: ignore[arg-type]
            out = out if pe_axis == 1 else np.ascontiguousarray(np.swapaxes(out, 1, 2))
            info = p.to_dict()
        else:
            out, g = simulate_ghosting(arr, severity, rng, spacing, axis=pe_axis)
            info = g.to_dict()
        rms = float(np.sqrt(np.mean((out - arr)[brain] ** 2))) if brain.any() else 0.0
        return out, {"kind": kind, "severity": round(severity, 4), "artefact_rms": rms, **info}

    return run


def head_header(prov: dict) -> dict:
    """DICOM attributes a site would send for this acquisition (sequence, geometry, phase-encode direction)."""
    contrast = str(prov.get("contrast", "t1_mprage")).removesuffix("_random")
    seq = dict(SEQUENCE_HEADERS[contrast])
    acq = prov.get("mr_acquisition", "3d")
    orient = {"axial": "AX", "sagittal": "SAG", "coronal": "COR"}[prov.get("orientation", "axial")]
    seq["SeriesDescription"] = f"{seq['SeriesDescription']} {acq.upper()} {orient}"
    part = prov.get("body_part", "HEAD")
    h = {"Modality": "MR", "Manufacturer": "SCANQC-SIM", "MRAcquisitionType": acq.upper(),
         "MagneticFieldStrength": prov.get("field_t", 3.0), "InPlanePhaseEncodingDirection": prov.get("phase_encode",
                                                                                                       "COL"),
         "ProtocolName": "BRAIN", **seq}
    if part:
        h["BodyPartExamined"] = part
    return h


def head_motion_case(rng: np.random.Generator, label: str, variant: str) -> tuple[Volume, dict, dict]:
    """A motion case on a randomised head (same labels and severity ranges as the template cases)."""
    from scanqc.datasets import motion as motion_mod

    lo, hi = motion_mod.LABEL_RANGES[label]
    severity = float(rng.uniform(lo, hi)) if hi > 0 else 0.0
    kind = "none" if severity == 0 else ("rigid" if rng.uniform() < 0.7 else "periodic")
    vol, _, prov = acquire_head(rng, variant, head_artefact(kind, severity, rng))
    prov["body_part"] = str(rng.choice(["HEAD", "BRAIN", ""], p=[0.45, 0.35, 0.2]))
    prov["field_t"] = float(rng.choice([1.5, 3.0]))
    fields = {"modality": "MR", "label": label, "severity": round(severity, 4), "body_region": "brain"}
    return vol, fields, prov


def head_coverage_case(rng: np.random.Generator, label: str, variant: str) -> tuple[Volume, dict, dict]:
    """A brain-coverage case on a randomised head: full (possibly only a few mm of air above the scalp) or cut."""
    from scanqc.datasets.coverage import crop_coverage, end_touches, random_coverage

    vol, req, prov = acquire_head(rng, variant, None)
    cinfo: dict = {"end": "full"}
    if label != "full":
        cp = random_coverage(rng, label, margin_mm=(3.0, 30.0), cut_fraction=(0.03, 0.3))
        vol, req, cinfo = crop_coverage(vol, req, cp, fill=0.0)
    # Which ends the required brain really touches after the crop (the label, checked on the image itself).
    prov["coverage"] = {**cinfo, "touching": end_touches(req, vol)}
    prov["body_part"] = str(rng.choice(["HEAD", "BRAIN", ""], p=[0.45, 0.35, 0.2]))
    fields = {"modality": "MR", "label": label, "missing": [] if label == "full" else [label],
              "body_region": "brain"}
    return vol, fields, prov
