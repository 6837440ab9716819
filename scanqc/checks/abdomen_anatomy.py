"""Anatomical localisation on abdominal CT: where the liver, kidneys, aorta, IVC, portal vein and spleen are,
their HU, and where the liver dome and the lower kidney poles lie relative to the scan's ends.

The contrast-phase check classifies from these measurements (as TotalSegmentator's ``totalseg_get_phase``
does from median HU of segmented structures) and the abdominal coverage check decides from the geometry,
so both say *why*: the measured HU and the distances in mm go into the check details.

:func:`locate` uses the segmentation network (:mod:`scanqc.checks.abdomen_seg`, 6 mm working grid) when it is
installed, else the hand-written rules of contrast phase 2.0.0 (:func:`locate_rules`). From the segmentation
(:func:`locate_seg`):

- **HU** on the ~3 mm detail grid, labels mapped onto it: medians in the aorta, IVC, portal vein and spleen
  eroded by one voxel in-plane (partial volume at the wall), the liver eroded by two voxels in 3D (median,
  p95, p05), and percentiles of the kidney mask (grown by one voxel, voxels above -20 HU: sinus and perirenal
  fat out): p90 ~ cortex (arterial) or collecting system (delayed), p25 ~ medulla, p99 ~ excreted contrast;
  with abdomen_seg >= 1.1.0 the kidney is parenchyma + collecting system, and the collecting system's own
  median / p90 (> -20 HU, no bone near) is reported: urine when the network finds it (it finds dark urine, not
  excreted contrast, which it labels kidney);
- **geometry** on the working grid, from the per-slice area of each organ's probability: the liver dome is
  the first slice from the superior end whose liver area reaches :data:`EDGE_FRACTION` of the largest, the
  lower poles the same from the inferior end (the distances);
- **the end slices** on the detail grid (:func:`_end_tissue_mm2`): the area of organ-like HU (the organ's own
  range) in the first / last detail slice where the segmentation puts the liver / kidneys; an end *cuts* the
  organ when that area reaches :data:`END_TISSUE_MM2` (the liver also when the working slice already holds
  :data:`CUT_FRACTION` of its largest section; without an HU reference the kidneys fall back to that rule). A
  kidney cut a few mm above its pole shows a small section that a 6 mm working slice averages away;
- **domain**: no liver (>= 40 ml) and no kidneys (>= 30 ml) segmented -> out of domain with the volumes in
  the reason (chest-only, pelvis-only, not an abdomen); a body narrower than 200 mm (head, limb) or an extent
  under 30 mm -> out of domain before the network runs.

Rules of :func:`locate_rules` (all relative to the patient, none to a particular simulator), on a ~3 mm grid:

- **body**: the largest connected region above -500 HU, holes filled (lungs, bowel gas);
- **spine**: dense bone (> 500 HU) in the central, posterior part of the body, slice by slice; its
  centroid is the reference for everything else (right = smaller column index in LPS storage);
- **aorta / IVC**: the brightest round structure (disc mean minus the ring around it, radius 7-13 mm)
  anterior to the vertebral body, left of (aorta) / right of (IVC) the spine's midline;
- **liver**: soft tissue (-20..300 HU) more than 40 mm right of the spine midline, at least 12 mm under
  the skin, opened with a ~20 mm disc (drops the chest and abdominal wall); its top-most slice with
  >= 8 cm^2 (continuing inferiorly) is the dome;
- **kidneys**: in the paravertebral box either side (50-125 mm lateral of the spine midline, at the depth
  of the vertebral body): voxels brighter than the liver by 30 HU when the aorta shows contrast, else
  soft tissue (10-75 HU) blobs; 3D components of >= 15 cm^3; their lowest slice is the lower pole.

numpy/scipy/onnxruntime only (runtime path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from scanqc.cache import cached
from scanqc.volume import Volume

WORK_MM = 3.0
DEBUG: dict[str, Any] | None = None  # set to a dict to receive the intermediate maps (development)
#: Everything measured for the contrast-phase classifiers; a classifier takes the ones its metadata names
#: (``preprocessing.features``, in its ONNX input's order) or, exported before that, a prefix (FEATURE_VERSIONS).
FEATURES: tuple[str, ...] = (
    "aorta", "ivc", "liver", "liver_p95", "liver_p05", "kidney_p90", "kidney_p25", "kidney_p99",
    "aorta_minus_liver", "aorta_minus_ivc", "kidney_cortex_minus_medulla", "collecting_minus_cortex",
    "kidney_p90_minus_liver", "kidneys_found",
    "portal_vein", "spleen", "kidney_p50", "portal_vein_minus_aorta", "spleen_minus_liver", "ivc_minus_liver",
    "kidney_p99_soft", "collecting_soft_minus_cortex",
    "liver_to_aorta_enh", "ivc_to_aorta_enh", "kidney_to_aorta_enh", "cortex_medulla_to_aorta_enh",
    "portal_vein_to_aorta_enh", "spleen_to_aorta_enh",
    "collecting_system", "collecting_system_p90", "collecting_minus_kidney_p50", "collecting_found",
)
#: Typical unenhanced HU (blood, liver, renal cortex, spleen) the enhancement ratios subtract.
NATIVE_HU = {"blood": 40.0, "liver": 55.0, "kidney": 35.0, "spleen": 45.0}
#: Feature counts of classifiers that take a prefix (exported before models named their features: 2.0.0: 14,
#: 2.1.0: 20, 2.2.0: 28); newer ones name theirs (``preprocessing.features``). Append only, so adding features
#: never changes what a shipped model sees. The last four (the segmented collecting system, abdomen_seg >= 1.1.0)
#: lost on the blind family until the classifier was fit with excretion twins (2.5.0; docs/model-quality.md).
FEATURE_VERSIONS = (14, 20, 28)


@dataclass
class Anatomy:
    """What :func:`locate` found. Distances are mm; HU are medians or percentiles over the structure."""

    in_domain: bool
    reason: str
    hu: dict[str, float | None] = field(default_factory=dict)
    found: dict[str, bool] = field(default_factory=dict)
    # Superior end -> liver dome (mm, > 0 = the dome is inside the scan by this much; <= 0: cut).
    dome_to_first_slice_mm: float | None = None
    # Lower kidney poles -> inferior end (mm, > 0 = inside by this much; <= 0: cut).
    kidneys_to_last_slice_mm: float | None = None
    liver_cut_superior: bool = False
    kidneys_cut_inferior: bool = False
    extent_mm: float = 0.0
    liver_extent_mm: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # segmented volumes, end-slice fractions
    # Organ-like tissue (mm^2) in the end slice itself (detail grid), where the segmentation puts the organ:
    # None when not measured (rules localisation, no HU reference); see :func:`_end_tissue_mm2`.
    liver_in_first_slice_mm2: float | None = None
    kidneys_in_last_slice_mm2: float | None = None

    def features(self) -> np.ndarray:
        """The classifier input (:data:`FEATURES`); missing kidney values fall back to the liver's."""
        h = self.hu
        liver = h.get("liver") or 55.0
        aorta = h.get("aorta") if h.get("aorta") is not None else liver
        ivc = h.get("ivc") if h.get("ivc") is not None else aorta
        k90 = h.get("kidney_p90") if h.get("kidney_p90") is not None else liver
        k25 = h.get("kidney_p25") if h.get("kidney_p25") is not None else liver
        k99 = h.get("kidney_p99") if h.get("kidney_p99") is not None else k90
        pv = h.get("portal_vein") if h.get("portal_vein") is not None else ivc
        spl = h.get("spleen") if h.get("spleen") is not None else liver
        k50 = h.get("kidney_p50") if h.get("kidney_p50") is not None else (k90 + k25) / 2
        vals = [aorta, ivc, liver, h.get("liver_p95") or liver, h.get("liver_p05") or liver, k90, k25, k99,
                aorta - liver, aorta - ivc, k90 - k25, k99 - k90, k90 - liver,
                1.0 if self.found.get("kidneys") else 0.0,
                pv, spl, k50, pv - aorta, spl - liver, ivc - liver]
        k99s = h.get("kidney_p99_soft") if h.get("kidney_p99_soft") is not None else k99
        vals += [k99s, k99s - k90]
        # Enhancement relative to the aorta's: the dose, the injection rate and the patient's cardiac output scale
        # every structure's enhancement together; their ratios are what the time after injection sets (the liver
        # and the portal vein catch up with the aorta by the portal venous phase and pass it in the delayed one).
        blood, den = NATIVE_HU["blood"], max(abs(aorta - NATIVE_HU["blood"]), 15.0)
        vals += [(liver - NATIVE_HU["liver"]) / den, (ivc - blood) / den, (k90 - NATIVE_HU["kidney"]) / den,
                 (k90 - k25) / den, (pv - blood) / den, (spl - NATIVE_HU["spleen"]) / den]
        # The urine: 2-16 HU up to ~100 s, excreted contrast from ~2 min. Not segmented (a network without the
        # class, a collecting system too small for the 6 mm grid): the parenchyma's median, flagged.
        cs_found = h.get("collecting_system") is not None
        cs = h["collecting_system"] if cs_found else k50
        cs90 = h.get("collecting_system_p90") if h.get("collecting_system_p90") is not None else cs
        vals += [cs, cs90, cs - k50, 1.0 if cs_found else 0.0]
        return np.asarray(vals, np.float32)

    def details(self) -> dict[str, Any]:
        """JSON-ready summary for the check output."""
        return {"measured_hu": {k: (None if v is None else round(float(v), 1)) for k, v in self.hu.items()},
                "found": dict(self.found),
                "liver_dome_below_first_slice_mm": _r(self.dome_to_first_slice_mm),
                "kidneys_above_last_slice_mm": _r(self.kidneys_to_last_slice_mm),
                "scan_extent_mm": _r(self.extent_mm), **self.extra}


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 1)


def _work_grid(volume: Volume, cache: dict | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    from scanqc.preprocessing import canonicalize, resample_fit

    arr, spacing = canonicalize(volume)
    sz, sy, sx = spacing
    tz = sz if sz >= 2.4 else WORK_MM
    shape = (max(int(np.round(arr.shape[0] * sz / tz)), 1), max(int(np.round(arr.shape[1] * sy / WORK_MM)), 8),
             max(int(np.round(arr.shape[2] * sx / WORK_MM)), 8))
    work = resample_fit(arr, shape, True, None)
    return work, (arr.shape[0] * sz / shape[0], arr.shape[1] * sy / shape[1], arr.shape[2] * sx / shape[2])


def _disc(radius_px: float) -> np.ndarray:
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= radius_px ** 2 + 1e-6


def _body_mask(a: np.ndarray, px: float) -> np.ndarray:
    """Torso per slice: > -500 HU, opened with a 15 mm disc so the table and arms resting against the body
    come off (their contact is a neck narrower than 30 mm), largest component, grown back, holes filled."""
    m = a > -500
    k = _disc(15.0 / px)
    out = np.zeros_like(m)
    for z in range(m.shape[0]):
        o = ndimage.binary_opening(m[z], structure=k)
        lab, n = ndimage.label(o)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        torso = lab == (int(np.argmax(sizes)) + 1)
        torso = ndimage.binary_dilation(torso, structure=k) & m[z]
        out[z] = ndimage.binary_fill_holes(torso)
    return out


def _round_bright(a: np.ndarray, roi: np.ndarray, spacing: tuple[float, float, float],
                  exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice: (row, col, score) of the brightest disc-minus-ring in ``roi`` (radius 7-13 mm)."""
    px = spacing[1]
    best_s = np.full(a.shape[0], -np.inf)
    best_r = np.zeros(a.shape[0], int)
    best_c = np.zeros(a.shape[0], int)
    clipped = np.clip(a, -150, 500)
    for rad in (7.0, 10.0, 13.0):
        d = _disc(rad / px).astype(np.float32)
        ring = _disc((rad + 6.0) / px).astype(np.float32)
        ring[tuple(slice((ring.shape[i] - d.shape[i]) // 2, (ring.shape[i] + d.shape[i]) // 2) for i in range(2))] -= d
        dm = ndimage.convolve(clipped, (d / d.sum())[None], mode="nearest")
        rm = ndimage.convolve(clipped, (ring / ring.sum())[None], mode="nearest")
        score = dm - 0.7 * rm + 0.3 * dm
        score = np.where(roi, score, -np.inf)
        if exclude is not None:
            score = np.where(exclude, -np.inf, score)
        flat = score.reshape(a.shape[0], -1)
        idx = np.argmax(flat, axis=1)
        s = flat[np.arange(a.shape[0]), idx]
        better = s > best_s
        best_s = np.where(better, s, best_s)
        rr, cc = np.unravel_index(idx, a.shape[1:])
        best_r, best_c = np.where(better, rr, best_r), np.where(better, cc, best_c)
    return best_r, best_c, best_s


def _disc_median(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, slices: np.ndarray, radius_px: float) -> float:
    d = _disc(radius_px)
    r = d.shape[0] // 2
    vals = []
    for z in slices:
        y0, x0 = int(rows[z]), int(cols[z])
        sl = a[z, max(0, y0 - r):y0 + r + 1, max(0, x0 - r):x0 + r + 1]
        dd = d[r - (y0 - max(0, y0 - r)):, r - (x0 - max(0, x0 - r)):][:sl.shape[0], :sl.shape[1]]
        vals.append(float(np.median(sl[dd])))
    return float(np.median(vals)) if vals else float("nan")


def locate(volume: Volume, cache: dict | None = None, network: str | None = None) -> Anatomy:
    """Find the abdominal landmarks of a CT volume (HU). Never raises on odd anatomy: says out of domain.

    ``network``: the abdomen_seg version to localise with (default: the installed default, which the coverage
    check and a contrast-phase model fit on it share, so one series runs one network)."""
    from scanqc.checks import abdomen_seg

    d = abdomen_seg.network_dir(network)
    if network and not abdomen_seg.available(d):
        # A classifier fit on that network's measurements: the rules' (or another network's) are not its input.
        from scanqc.errors import ErrorCode, ScanQCError

        raise ScanQCError(ErrorCode.BAD_MODEL, f"abdominal segmentation network abdomen_seg {network} is not "
                                               f"installed ({d}); the model's HU features are measured with it")

    def find() -> Anatomy:
        return locate_seg(volume, cache, d) if abdomen_seg.available(d) else locate_rules(volume, cache)

    return cached(cache, "abdomen_anatomy" if d == abdomen_seg.MODEL_DIR else f"abdomen_anatomy@{d.name}", find)


def _too_narrow(body: np.ndarray, px_mm: float, extent: float) -> Anatomy | None:
    """Out of the domain when the body's median left-right width is under 200 mm (a head or a limb)."""
    width = np.array([(np.flatnonzero(c)[-1] - np.flatnonzero(c)[0] + 1) * px_mm if c.any() else 0
                      for c in body.any(1)])
    med_width = float(np.median(width))
    if med_width < 200:
        return Anatomy(False, f"body {med_width:.0f} mm across: smaller than an adult abdomen (head or limb?)",
                       extent_mm=extent)
    return None


def locate_rules(volume: Volume, cache: dict | None = None) -> Anatomy:
    """The hand-written rules (contrast phase 2.0.0's localisation), kept as the fallback when the segmentation
    network is not installed."""
    a, (sz, sy, sx) = _work_grid(volume, cache)
    nz, ny, nx = a.shape
    extent = nz * sz
    if nz < 4:
        return Anatomy(False, f"only {nz} slices at {sz:.1f} mm: too short an extent for abdominal landmarks",
                       extent_mm=extent)
    body = _body_mask(a, sx)
    area = body.sum((1, 2)) * sy * sx / 100.0  # cm^2 per slice
    narrow = _too_narrow(body, sx, extent)
    if narrow is not None:
        return narrow
    # Spine: dense bone in the central band of the posterior body, slice by slice.
    rows = np.arange(ny)[None, :, None]
    colsg = np.arange(nx)[None, None, :]
    brows = np.where(body.any(2), np.arange(ny)[None, :], np.nan)
    top_row, bot_row = np.nanmin(brows, 1), np.nanmax(brows, 1)
    bcols = np.where(body.any(1), np.arange(nx)[None, :], np.nan)
    left_col, right_col = np.nanmin(bcols, 1), np.nanmax(bcols, 1)
    mid_col = (left_col + right_col) / 2
    half_w = (right_col - left_col) / 2
    central = (np.abs(colsg - mid_col[:, None, None]) < 0.3 * half_w[:, None, None]) & \
              (rows > ((top_row + bot_row) / 2)[:, None, None])
    bone = (a > 500) & body & central
    has_spine = bone.sum((1, 2)) * sy * sx >= 150.0  # mm^2
    if has_spine.mean() < 0.5:
        return Anatomy(False, f"no vertebral column found in {100 * (1 - has_spine.mean()):.0f} % of slices "
                              "(not an axial body CT?)", extent_mm=extent)
    zz = np.flatnonzero(has_spine)
    sr = np.array([np.nan] * nz)
    sc = np.array([np.nan] * nz)
    sfront = np.array([np.nan] * nz)
    for z in zz:
        r_, c_ = np.nonzero(bone[z])
        sc[z] = np.median(c_)
        near = np.abs(c_ - sc[z]) * sx < 15
        sfront[z] = np.min(r_[near]) if near.any() else np.min(r_)
        sr[z] = np.median(r_)
    idx = np.arange(nz)
    for arr_ in (sr, sc, sfront):
        ok = ~np.isnan(arr_)
        arr_[:] = np.interp(idx, idx[ok], arr_[ok])
    sc = ndimage.median_filter(sc, 5, mode="nearest")
    sfront = ndimage.median_filter(sfront, 5, mode="nearest")
    # Vertebral body: bone-bright (> 100 HU) regions wide enough to hold a 26 mm disc (the body is 28-40 mm
    # deep; the aorta, <= 28 mm across, drops out). The body's front is the end of that mask along the
    # midline column, walking anteriorly from the dense bone across at most 30 mm of spinal canal.
    big = np.zeros_like(body)
    k13 = _disc(13.0 / sx)
    for z in range(nz):
        big[z] = ndimage.binary_opening(a[z] > 100, structure=k13)
    vb_front = np.full(nz, np.nan)
    for z in range(nz):
        c = int(np.round(sc[z]))
        col = a[z, :, max(0, c - 1):c + 2].mean(1)
        r0 = int(sfront[z])
        lo, hi = max(1, r0 - int(70 / sy)), min(ny - 2, r0 + int(40 / sy))
        # The spinal canal: a dark run (-30..70 HU, 5-30 mm) with bone (> 150 HU) on both sides.
        canal = None
        r = lo
        while r <= hi:
            if -30 < col[r] < 70:
                e = r
                while e + 1 < ny and -30 < col[e + 1] < 70:
                    e += 1
                length = (e - r + 1) * sy
                if 5 <= length <= 30 and col[r - 1] > 150 and e + 1 < ny and col[e + 1] > 150:
                    if canal is None or abs(r - r0) < abs(canal - r0):
                        canal = r
                r = e + 1
            else:
                r += 1
        if canal is None:
            continue
        # The body: bone-bright (> 80 HU, one-pixel dips allowed) in front of the canal, at most 40 mm deep.
        f = canal - 1
        while f - 1 >= 0 and (canal - f) * sy < 40 and (col[f - 1] > 80 or (f - 2 >= 0 and col[f - 2] > 80)):
            f -= 1
        vb_front[z] = f
    found_vb = ~np.isnan(vb_front)
    # Slices where no canal was seen (discs, partial volume) take the body front of the nearest slices that had one.
    vb_front = np.interp(idx, idx[found_vb], vb_front[found_vb]) if found_vb.any() else sfront.copy()
    vb_front = ndimage.median_filter(vb_front, 5, mode="nearest")
    # Aorta: brightest round structure anterior to the vertebral body, spine midline -10..+45 mm (left).
    dr = (rows - vb_front[:, None, None]) * sy
    dc = (colsg - sc[:, None, None]) * sx
    dense = ndimage.binary_dilation(a > 600, structure=np.ones((1, 3, 3), bool))
    bony = ndimage.binary_dilation(a > 450, structure=np.ones((1, 5, 5), bool))
    roi_a = body & (dr > -70) & (dr < -3) & (dc > -10) & (dc < 35)
    # Bone to keep the disc search off: the body behind its front (not an aorta lying against it), dense bone.
    behind = (rows >= vb_front[:, None, None] - 1) & (np.abs(colsg - sc[:, None, None]) * sx < 35)
    vb_mask = ndimage.binary_dilation(big & behind, structure=np.ones((1, 3, 3), bool))
    ar, ac, _ = _round_bright(a, roi_a, (sz, sy, sx), dense | vb_mask)
    abd = np.zeros(nz, bool)
    # Where to measure: slices with body area of an abdomen and not mostly lung.
    air_in = ((a < -400) & body).sum((1, 2)) * sy * sx / 100.0
    abd = (air_in < 0.35 * area) & has_spine
    if abd.sum() < 3:
        abd = has_spine
    zs = np.flatnonzero(abd)
    med_c, med_r = np.median(ac[zs]), np.median(ar[zs])
    good = zs[(np.abs(ac[zs] - med_c) * sx < 20) & (np.abs(ar[zs] - med_r) * sy < 25)]
    if good.size < 2:
        good = zs
    aorta = _disc_median(a, ar, ac, good, 5.0 / sx)
    # IVC: right of the aorta (smaller column), same depth band, not overlapping the aorta's disc.
    not_aorta = np.zeros_like(body)
    for z in range(nz):
        rr, cc = int(ar[z]), int(ac[z])
        r0 = int(np.ceil(18.0 / sx))
        not_aorta[z, max(0, rr - r0):rr + r0 + 1, max(0, cc - r0):cc + r0 + 1] = True
    roi_i = body & (dr > -70) & (dr < 0) & (dc > -55) & (dc < -5)
    ir, ic, _ = _round_bright(a, roi_i, (sz, sy, sx), dense | not_aorta | vb_mask)
    ivc = _disc_median(a, ir, ic, good, 4.0 / sx)
    # Liver: soft tissue right of the spine, under the wall, opened with a ~20 mm disc.
    skin_in = np.stack([ndimage.distance_transform_edt(s, sampling=(sy, sx)) for s in body])
    soft = (a > -20) & (a < 300) & body & (skin_in > 12.0) & (dc < -40)
    soft = ndimage.binary_opening(soft, structure=_disc(10.0 / sx)[None])
    larea = soft.sum((1, 2)) * sy * sx / 100.0
    liver_rows = larea >= 8.0
    dome_idx = None
    for z in range(nz):
        if liver_rows[z] and liver_rows[z:z + 4].all() and z + 4 <= nz:
            dome_idx = z
            break
    liver_hu: dict[str, float | None] = {"liver": None, "liver_p95": None, "liver_p05": None}
    liver_extent = 0.0
    if dome_idx is not None:
        run = dome_idx
        while run < nz and liver_rows[run]:
            run += 1
        liver_extent = float(liver_rows[dome_idx:].sum()) * sz
        # Parenchyma: the top 30-90 mm of the liver (kidneys start lower), eroded 6 mm from its edges.
        z0 = dome_idx + int(np.round(10 / sz))
        z1 = min(run, dome_idx + max(int(np.round(90 / sz)), 3))
        core = ndimage.binary_erosion(soft[z0:z1], structure=_disc(6.0 / sx)[None])
        v = a[z0:z1][core] if core.sum() > 50 else a[dome_idx:run][soft[dome_idx:run]]
        if v.size:
            liver_hu = {"liver": float(np.median(v)), "liver_p95": float(np.percentile(v, 95)),
                        "liver_p05": float(np.percentile(v, 5))}
    liver = liver_hu["liver"]
    # Kidneys: paravertebral boxes either side at the depth of the vertebral body.
    enhanced = aorta > 90.0 or (liver is not None and liver > 80.0)
    depth_ok = (dr > -15) & (dr < 75)
    lateral = (np.abs(dc) > 45) & (np.abs(dc) < 125)
    box = body & depth_ok & lateral & (skin_in > 10.0)
    if enhanced:
        thr = max((liver if liver is not None else 55.0) + 18.0, 90.0)
        cand = box & (a > thr) & ~bony
        cand = ndimage.binary_opening(cand, structure=_disc(1.5)[None])
    else:
        cand = box & (a > 10) & (a < 75)
        cand = ndimage.binary_opening(cand, structure=_disc(8.0 / sx)[None])
    lab, n = ndimage.label(cand)
    kid = np.zeros_like(cand)
    if n:
        vox_cm3 = sz * sy * sx / 1000.0
        sizes = ndimage.sum_labels(cand, lab, np.arange(1, n + 1)) * vox_cm3
        objs = ndimage.find_objects(lab)
        for i, (s, sl) in enumerate(zip(sizes, objs)):
            if s < 15.0 or sl is None:
                continue
            zext = (sl[0].stop - sl[0].start) * sz
            if zext < 30.0 or zext > 220.0:
                continue
            kid |= lab == i + 1
    kidneys_found = bool(kid.sum() * sz * sy * sx / 1000.0 >= 15.0)
    khu: dict[str, float | None] = {"kidney_p90": None, "kidney_p25": None, "kidney_p99": None}
    kid_to_last = None
    kid_cut = False
    if kidneys_found:
        grown = ndimage.binary_dilation(kid, structure=np.ones((1, 5, 5), bool)) & box
        v = a[grown]
        khu = {"kidney_p90": float(np.percentile(a[kid], 90)), "kidney_p25": float(np.percentile(a[kid], 25)),
               "kidney_p99": float(np.percentile(v, 99))}
        # Slices with >= 3 cm^2 of kidney (6 cm^2 unenhanced, where muscle and bowel look alike).
        kz = np.flatnonzero(kid.sum((1, 2)) * sy * sx >= (300.0 if enhanced else 600.0))
        kz = kz if kz.size else np.flatnonzero(kid.any((1, 2)))
        last = int(kz[-1])
        kid_to_last = (nz - 1 - last) * sz
        kid_cut = last >= nz - 1
    hu: dict[str, float | None] = {"aorta": aorta, "ivc": ivc, **liver_hu, **khu}
    found = {"spine": True, "aorta": bool(np.isfinite(aorta)), "liver": dome_idx is not None,
             "kidneys": kidneys_found}
    dome_mm = None
    liver_cut = False
    if dome_idx is not None:
        dome_mm = dome_idx * sz
        liver_cut = dome_idx == 0
    anat = Anatomy(True, "", hu, found, dome_mm, kid_to_last, liver_cut, kid_cut, extent, liver_extent)
    if DEBUG is not None:
        DEBUG.update(a=a, sc=sc, sr=sr, vb_front=vb_front, ar=ar, ac=ac, ir=ir, ic=ic, soft=soft, kid=kid, box=box,
                     cand=cand, larea=larea, good=good)
    if dome_idx is None and not kidneys_found:
        anat.in_domain = False
        anat.reason = "no liver or kidneys in view (chest-only or pelvis-only CT?)"
    elif liver_extent < 30.0 and not kidneys_found:
        anat.in_domain = False
        anat.reason = (f"only {liver_extent:.0f} mm of liver and no kidneys in view (a chest CT reaching the "
                       "liver dome?)")
    return anat


def feature_input(volume: Volume, features: int | tuple[str, ...], cache: dict | None = None,
                  network: str | None = None) -> np.ndarray:
    """The ``abdomen_hu`` model input as float32 ``[1, 1, 1, F]``: the named :data:`FEATURES` (or the first
    ``features`` of them) of :func:`locate` by abdomen_seg ``network``, the one the classifier was fit on."""
    from scanqc.errors import ErrorCode, ScanQCError

    if isinstance(features, int):
        if features not in FEATURE_VERSIONS:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"model expects the first {features} HU features; a model that "
                                                   "does not name its features (preprocessing.features) takes the "
                                                   f"first {', '.join(map(str, FEATURE_VERSIONS))} of "
                                                   f"{', '.join(FEATURES)}")
        idx = list(range(features))
    else:
        unknown = [f for f in features if f not in FEATURES]
        if unknown:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"model expects HU feature(s) {', '.join(unknown)} that this "
                                                   f"scanqc does not measure ({', '.join(FEATURES)})")
        idx = [FEATURES.index(f) for f in features]
    return locate(volume, cache, network).features()[idx].reshape(1, 1, 1, -1)


# ----------------------------------------------------------------------------- by segmentation
#: A structure counts as found from this volume (ml) of its label on the working grid.
MIN_ML = {"liver": 40.0, "kidney": 30.0, "spleen": 10.0, "aorta": 2.0, "ivc": 2.0, "portal_vein": 1.0}
#: An end cuts an organ when the organ's area in that end's working slice is at least this fraction of its
#: largest slice area (a dome or a pole just inside the scan shows a sliver; a cut organ its full section).
CUT_FRACTION = {"liver": 0.2, "kidney": 0.2}
#: Kidney tissue (ml) below the domain's threshold that still places the kidneys' end when the liver is in view.
KIDNEY_TOP_ML = 3.0
#: Where along the area profile an organ starts (fraction of its largest slice area), for the distances.
EDGE_FRACTION = 0.05
#: The end test on the detail grid (:func:`_end_tissue_mm2`): (warn, cut) areas in mm^2 of organ-like tissue in
#: the end slice. Kidney: a pole cut 5 mm above its tip leaves a ~2 cm^2 section; a full scan's last slice holds
#: perirenal fat there. Liver: the dome is broad (a 6 mm cut leaves > 25 cm^2), the heart and diaphragm above it
#: can reach a few cm^2. Chosen on validation draws (seed 7302, variant train; docs/model-quality.md).
END_TISSUE_MM2 = {"kidney": (100.0, 200.0), "liver": (300.0, 1500.0)}
#: Where the organ is, for the end test: its probability in the two working slices at that end.
END_PROB = 0.4
#: Detail voxels (~3 mm) of collecting system needed to report its HU (one 6 mm working voxel is 8).
CS_MIN_VOXELS = 8


# Binary morphology on the class maps, by shifted logical operations: the very results of scipy.ndimage's
# binary_erosion / binary_dilation (border 0) with the structures named, several times faster on these small
# masks (their sum was a tenth of the localisation; tests/checks/test_abdomen_morphology.py compares them).
def _shifted(m: np.ndarray, op: Any, axes: tuple[int, ...]) -> np.ndarray:
    """``m`` combined by ``op`` (``np.logical_and`` / ``np.logical_or``) with its neighbours one voxel away
    along each of ``axes`` (a cross on those axes); outside the array counts as False."""
    out = m.copy()
    for ax in axes:
        lo, hi, first, last = (tuple(sl if a == ax else slice(None) for a in range(m.ndim))
                               for sl in (slice(1, None), slice(None, -1), slice(0, 1), slice(-1, None)))
        op(out[lo], m[hi], out=out[lo])  # each voxel with the one before it along ax
        op(out[hi], m[lo], out=out[hi])  # and with the one after it
        if op is np.logical_and:  # the end voxels' missing neighbour is False
            out[first] = False
            out[last] = False
    return out


def erode_cross(m: np.ndarray, iterations: int, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """``ndimage.binary_erosion(m, cross on axes, iterations)``."""
    for _ in range(iterations):
        m = _shifted(m, np.logical_and, axes)
    return m


def dilate_box(m: np.ndarray, iterations: int = 1, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """``ndimage.binary_dilation(m, ones(3 along axes, 1 elsewhere), iterations)``: a box is separable."""
    for _ in range(iterations):
        for ax in axes:
            m = _shifted(m, np.logical_or, (ax,))
    return m


def _dilate_cross(m: np.ndarray) -> np.ndarray:
    """``ndimage.binary_dilation(m)`` (6-connected cross, one iteration)."""
    return _shifted(m, np.logical_or, (0, 1, 2))


def _eroded_values(a: np.ndarray, m: np.ndarray, iterations: int, three_d: bool = False, min_n: int = 8
                   ) -> np.ndarray:
    """HU inside ``m`` eroded (in-plane, or 3D) by ``iterations`` detail voxels; less erosion when too few remain.
    ``a`` and ``m`` cover the structure's bounding box with a margin of one voxel
    (:func:`scanqc.checks.abdomen_seg.detail_boxes`)."""
    for it in range(iterations, 0, -1):
        e = erode_cross(m, it, (0, 1, 2) if three_d else (1, 2))
        if e.sum() >= min_n:
            return a[e]
    return a[m]


def _plane_to_detail(grid: Any, plane: np.ndarray) -> np.ndarray:
    """A working-grid in-plane map (cropped, INPLANE^2) -> the detail grid's in-plane shape, nearest neighbour
    (the in-plane half of :func:`scanqc.checks.abdomen_seg.to_detail`; outside the crop: False)."""
    pad = np.pad(plane, 1)
    idx = []
    for ax in (1, 2):
        nd, nw = grid.detail.shape[ax], grid.full_shape[ax]
        j = np.minimum(((np.arange(nd) + 0.5) * nw / nd).astype(np.int64), nw - 1) - grid.offset[ax - 1]
        idx.append(np.clip(j + 1, 0, plane.shape[ax - 1] + 1))
    return pad[idx[0]][:, idx[1]]


def _end_tissue_mm2(grid: Any, prob: np.ndarray, lo: float, hi: float, first: bool) -> float:
    """Area (mm^2) of organ-like tissue in the scan's end slice on the detail grid (the last ~3-5 mm of native
    slices, not the 6 mm working slice that averages a tapering pole with what lies beyond it): voxels whose HU
    lies in the organ's own range [lo, hi] where the segmentation gives the organ >= :data:`END_PROB` in the two
    working slices at that end (``prob``: those two slices, ``[2, INPLANE, INPLANE]``, already limited to near
    the organ's kept components: a stray blob has no say).
    The fat around a pole or dome that ends inside the scan is out of the range."""
    where = _plane_to_detail(grid, prob.max(0) >= END_PROB)
    sl = grid.detail[0 if first else -1]
    return float(((sl > lo) & (sl < hi) & where).sum() * grid.detail_spacing[1] * grid.detail_spacing[2])


def _profile_end(area: np.ndarray, from_top: bool) -> tuple[int, float]:
    """(index of the organ's first slice from that end, that end slice's area as a fraction of the maximum)."""
    prof = area if from_top else area[::-1]
    mx = float(prof.max())
    first = int(np.argmax(prof >= EDGE_FRACTION * mx))
    return first, float(prof[0] / mx)


#: Connected components kept per organ (3D, working grid): the liver is one organ, the kidneys two; smaller
#: components must reach this share of the largest to stay (a lobe cut off by the coarse grid stays, a stray
#: voxel cluster in the chest or pelvis goes).
KEEP = {"liver": (1, 0.25), "spleen": (1, 0.25), "kidney": (2, 0.15)}


def _main_components(cls: np.ndarray, names: tuple[str, ...], vox_ml: float) -> np.ndarray:
    out = cls.copy()
    for n, (k, share) in KEEP.items():
        c = names.index(n)
        lab, num = ndimage.label(cls == c)
        if num <= k:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        keep = [i + 1 for j, i in enumerate(order) if j < k and sizes[i] >= share * sizes[order[0]]]
        keep += [i + 1 for i in order[k:] if sizes[i] >= 0.5 * sizes[order[0]]]  # e.g. two liver parts
        out[(lab > 0) & ~np.isin(lab, keep)] = 0
    return out


def locate_seg(volume: Volume, cache: dict | None = None, model_dir: Path | None = None) -> Anatomy:
    """Localisation by the segmentation network (:mod:`scanqc.checks.abdomen_seg`) and measurement."""
    from scanqc.checks import abdomen_seg as seg

    model_dir = model_dir or seg.MODEL_DIR

    g = seg.work_grid(volume, cache)
    nz = g.image.shape[0]
    sz, sy, sx = g.spacing
    extent = g.native_extent_mm
    if extent < 30.0 or nz < 4:
        return Anatomy(False, f"only {extent:.0f} mm of superior-inferior extent: too short for abdominal "
                              "landmarks", extent_mm=extent)
    narrow = _too_narrow(g.image > -500, sx, extent)
    if narrow is not None:
        return narrow
    _, probs = seg.segment(volume, cache, model_dir)
    names = seg.classes(model_dir)
    vox_ml = sz * sy * sx / 1000.0
    raw = seg.first_argmax(probs)
    cs_mask = None
    if "collecting_system" in names:
        # The kidney of every measurement below is parenchyma + collecting system (what 1.0.0 labelled kidney);
        # the collecting system is measured on its own where it lies inside the kept kidneys.
        ics, ik = names.index("collecting_system"), names.index("kidney")
        cs_mask = raw == ics
        raw[cs_mask] = ik
        probs = probs.copy()
        probs[ik] += probs[ics]
        probs = probs[[i for i in range(len(names)) if i != ics]]
        names = tuple(n for n in names if n != "collecting_system")
    cls = _main_components(raw, names, vox_ml)
    ml = {n: float((cls == i).sum()) * vox_ml for i, n in enumerate(names)}
    found = {"spine": ml["bone"] >= 20.0, "liver": ml["liver"] >= MIN_ML["liver"],
             "kidneys": ml["kidney"] >= MIN_ML["kidney"], "aorta": ml["aorta"] >= MIN_ML["aorta"],
             "ivc": ml["ivc"] >= MIN_ML["ivc"], "portal_vein": ml["portal_vein"] >= MIN_ML["portal_vein"],
             "spleen": ml["spleen"] >= MIN_ML["spleen"]}
    volumes = {n: round(ml[n], 1) for n in names[1:]}
    if not found["liver"] and not found["kidneys"]:
        return Anatomy(False, f"no liver or kidneys in view (liver {ml['liver']:.0f} ml, kidneys "
                              f"{ml['kidney']:.0f} ml segmented; chest-only, pelvis-only or not an abdominal CT?)",
                       found=found, extent_mm=extent)
    a = g.detail
    cd = seg.to_detail(g, cls)
    empty = (slice(0, 0),) * 3
    box1 = seg.detail_boxes(g, cls, 1)
    hu: dict[str, float | None] = {k: None for k in ("aorta", "ivc", "portal_vein", "liver", "liver_p95",
                                                      "liver_p05", "spleen", "kidney_p90", "kidney_p50",
                                                      "kidney_p25", "kidney_p99", "kidney_p99_soft",
                                                      "collecting_system", "collecting_system_p90")}
    for n in ("aorta", "ivc", "portal_vein", "spleen"):
        if found[n]:
            b = box1.get(names.index(n), empty)
            hu[n] = float(np.median(_eroded_values(a[b], cd[b] == names.index(n), 1)))
    if found["liver"]:
        b = box1.get(names.index("liver"), empty)
        v = _eroded_values(a[b], cd[b] == names.index("liver"), 2, three_d=True, min_n=50)
        hu.update(liver=float(np.median(v)), liver_p95=float(np.percentile(v, 95)),
                  liver_p05=float(np.percentile(v, 5)))
    kidney_range: tuple[float, float] | None = None
    if found["kidneys"] or (found["liver"] and ml["kidney"] >= KIDNEY_TOP_ML):
        ik = names.index("kidney")
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) if b.stop > b.start else b
                    for b in box1.get(ik, empty))  # the margin of 2
        km = cd[box] == ik
        core = km & (a[box] > -20)
        if core.sum() >= 20:
            # Parenchyma range for the end test: fat out below, bone (rib, iliac crest at the pole) out above.
            k10, k90 = np.percentile(a[box][core], [10, 90])
            kidney_range = (float(k10) - 10.0, min(float(k90) + 60.0, 400.0))
        km = dilate_box(km, 1, (1, 2))
        v = a[box][km & (a[box] > -20)]  # renal sinus fat and perirenal fat out
        if found["kidneys"] and v.size >= 20:
            hu.update(kidney_p90=float(np.percentile(v, 90)), kidney_p50=float(np.percentile(v, 50)),
                      kidney_p25=float(np.percentile(v, 25)), kidney_p99=float(np.percentile(v, 99)))
            # The 12th rib, the transverse processes and the psoas' neighbour, the spine, lie within the dilated
            # kidney box: cortical bone (700-1000 HU) there reads as excreted contrast in a portal venous scan.
            # Without the voxels labelled bone and 2 detail voxels (~6 mm) around them (partial volume at the
            # bone's edge), the top percentile is the collecting system's.
            bone = dilate_box(cd[box] == names.index("bone"), 2)
            soft = a[box][km & ~bone & (a[box] > -20)]
            if soft.size >= 20:
                hu["kidney_p99_soft"] = float(np.percentile(soft, 99))
            if cs_mask is not None:
                # Urine or excreted contrast: the sinus fat around it out (> -20 HU), the kidneys' kept components
                # only. Voxels of the 3 mm detail grid under the working grid's collecting-system label.
                cs = seg.to_detail(g, (cs_mask & (cls == names.index("kidney"))).astype(np.uint8), box) == 1
                u = a[box][cs & ~bone & (a[box] > -20)]
                if u.size >= CS_MIN_VOXELS:
                    hu.update(collecting_system=float(np.median(u)), collecting_system_p90=float(np.percentile(u, 90)))
    # Geometry on the working grid (axis 0: first slice = superior end). Areas from the probabilities.
    # Only near the kept components: a stray blob (heart called liver, bowel called kidney) has no say.
    near = {n: _dilate_cross(cls == names.index(n)) for n in ("liver", "kidney")}
    area_l = (probs[names.index("liver")] * near["liver"]).sum((1, 2)) * sy * sx
    area_k = (probs[names.index("kidney")] * near["kidney"]).sum((1, 2)) * sy * sx
    dome_mm = kid_mm = None
    liver_cut = kid_cut = False
    liver_extent = float((cls == names.index("liver")).any((1, 2)).sum()) * sz
    fractions: dict[str, float] = {}
    tissue: dict[str, float] = {}
    if found["liver"]:
        first, frac = _profile_end(area_l, True)
        dome_mm, liver_cut = first * sz, frac >= CUT_FRACTION["liver"]
        fractions["liver_in_first_slice"] = round(frac, 3)
        if hu["liver_p05"] is not None and hu["liver_p95"] is not None:
            t = _end_tissue_mm2(g, probs[names.index("liver"), :2] * near["liver"][:2], hu["liver_p05"] - 10.0,
                                hu["liver_p95"] + 30.0, True)
            tissue["liver_in_first_slice"] = round(t, 1)
            liver_cut = liver_cut or t >= END_TISSUE_MM2["liver"][1]
    if found["kidneys"] or (found["liver"] and ml["kidney"] >= KIDNEY_TOP_ML):
        # With the liver in view, a little kidney tissue is what an inferior end cutting the kidneys near their
        # top leaves (too little to measure HU on or to count as the domain's kidneys, enough for the geometry).
        last, frac = _profile_end(area_k, False)
        kid_mm, kid_cut = last * sz, frac >= CUT_FRACTION["kidney"]
        fractions["kidneys_in_last_slice"] = round(frac, 3)
        if kidney_range is not None:
            # The end slice itself decides: the working slice's fraction both misses a pole cut a few mm above
            # its tip (the section tapers and is averaged with what lies beyond) and can pass 20 % on a full
            # scan whose poles end one working slice above the end.
            t = _end_tissue_mm2(g, probs[names.index("kidney"), -2:] * near["kidney"][-2:], *kidney_range, False)
            tissue["kidneys_in_last_slice"] = round(t, 1)
            kid_cut = t >= END_TISSUE_MM2["kidney"][1]
    anat = Anatomy(True, "", hu, found, dome_mm, kid_mm, liver_cut, kid_cut, extent, liver_extent,
                   liver_in_first_slice_mm2=tissue.get("liver_in_first_slice"),
                   kidneys_in_last_slice_mm2=tissue.get("kidneys_in_last_slice"))
    anat.extra = {"segmented_ml": volumes, "end_slice_area_fraction": fractions,
                  "end_slice_tissue_mm2": tissue, "working_slice_mm": round(sz, 1), "localisation": "segmentation"}
    if DEBUG is not None:
        DEBUG.update(grid=g, probs=probs, cls=cls, cd=cd, area_l=area_l, area_k=area_k)
    return anat
