"""One abdominal CT case: body, contrast timing, field of view (coverage), slice profile, kernel noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from . import abdomen as A
from .dicomio import Geometry

COVER_MIN_MM = 3.0  # as for the brain: full keeps the anatomy >= this inside the outer slice centres
THICKNESSES = [0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0]
THICK_P = [0.08, 0.1, 0.1, 0.15, 0.2, 0.15, 0.22]
KERNELS = {"B30f": 0.32, "STANDARD": 0.38, "SOFT": 0.28, "B40f": 0.45, "FC08": 0.35, "LUNG": 0.75, "B60f": 0.65}


@dataclass
class CTCase:
    volume: np.ndarray
    geom: Geometry
    header: dict[str, Any]
    label: str
    phase: str
    enhancement: str
    missing: str
    provenance: dict[str, Any]
    labels: np.ndarray | None = None  # label map on the acquisition grid (tests)
    clean: np.ndarray | None = None


def make_ct_case(seed: int, task: str, label: str, phase: str | None = None, keep_arrays: bool = False,
                 max_inplane: int = 256, thickness: float | None = None, z_step_max: float = 2.5) -> CTCase:
    rng = np.random.default_rng(seed)
    u = rng.uniform
    bp = A.draw_body(rng)
    body = A.Body(bp)
    ph = phase or (label if task == "contrast_phase" else str(rng.choice(list(A.PHASE_TIMES))))
    con = A.draw_contrast(rng, ph)
    # Coverage: required anatomy = liver dome (z = 0) through the lower poles of the kidneys.
    top_req, bot_req = body.liver_top(), body.pole_low
    thick = float(thickness or rng.choice(THICKNESSES, p=THICK_P))
    max_extent = 420.0 if thick >= 1.5 else 300.0  # bounds the slice count of thin reconstructions
    if label == "superior" and task == "coverage":
        top_margin = -float(np.exp(u(np.log(4.5), np.log(60.0))))
    else:
        top_margin = float(u(5.0, 15.0) if rng.random() < 0.35 else u(15.0, 90.0))
    if label == "inferior" and task == "coverage":
        bot_margin = -float(np.exp(u(np.log(4.5), np.log(60.0))))
    else:
        bot_margin = float(u(10.0, 25.0) if rng.random() < 0.35 else u(25.0, 160.0))
    extent = (top_req + top_margin) - (bot_req - bot_margin)
    if extent > max_extent:  # trim the generous margins, never the cut or the edge cases
        excess = extent - max_extent
        for which in ("bot", "top"):
            m = bot_margin if which == "bot" else top_margin
            take = min(excess, max(m - 25.0, 0.0))
            if which == "bot":
                bot_margin -= take
            else:
                top_margin -= take
            excess -= take
    z_top, z_bot = top_req + top_margin, bot_req - bot_margin
    nz = round((z_top - z_bot) / thick) + 1
    z_bot = z_top - (nz - 1) * thick  # the top end is placed exactly; the bottom within half a slice
    dist = {"liver_dome_to_superior_end_mm": round(z_top - top_req, 2),
            "kidneys_to_inferior_end_mm": round(bot_req - z_bot, 2)}
    got = ("full" if dist["liver_dome_to_superior_end_mm"] >= COVER_MIN_MM and dist["kidneys_to_inferior_end_mm"]
           >= COVER_MIN_MM else "superior" if dist["liver_dome_to_superior_end_mm"] <= -COVER_MIN_MM else
           "inferior" if dist["kidneys_to_inferior_end_mm"] <= -COVER_MIN_MM else None)
    want = label if task == "coverage" else "full"
    if got != want:
        raise RuntimeError(f"seed {seed}: drew {got} coverage for a {want} case")
    # In-plane field of view: the body (+ arms) and part of the table.
    half_w = bp["half_width_mm"] + (95.0 if bp["arms_in"] else 0.0) + u(10, 40)
    dfov = float(np.clip(2 * max(half_w, bp["half_ap_mm"] + 40), 300.0, 500.0))
    n = int(max_inplane)
    px = dfov / n
    off = np.asarray(bp["offset_mm"])
    xs = (np.arange(n) - (n - 1) / 2) * px + off[0]
    ys = (np.arange(n) - (n - 1) / 2) * px + off[1] + 0.1 * bp["half_ap_mm"]
    # Slice profile: sub-slices at <= z_step_max mm averaged over the thickness.
    n_sub = max(1, int(np.ceil(thick / z_step_max)))
    kern = str(rng.choice(list(KERNELS)))
    psf_mm = float(u(0.5, 1.0)) * (0.6 if KERNELS[kern] > 0.6 else 1.0)
    tex = {"fat": float(u(-115, -85)), "cortical": float(u(700, 1200)), "cancellous": float(u(140, 280)),
           "lung": float(u(-880, -800)), "fluid": float(u(0, 25)), "stool": float(u(-60, 60)), "bile": float(u(0, 20))}
    vol = np.empty((nz, n, n), np.float32)
    lab_keep = np.empty((nz, n, n), np.uint8) if keep_arrays else None
    X = xs[None, None, :].astype(np.float32)
    Y = ys[None, :, None].astype(np.float32)
    chunk = 16
    for k0 in range(0, nz, chunk):
        ks = np.arange(k0, min(nz, k0 + chunk))
        acc = np.zeros((len(ks), n, n), np.float32)
        for s in range(n_sub):
            dz = ((s + 0.5) / n_sub - 0.5) * thick if n_sub > 1 else 0.0
            Z = (z_bot + ks * thick + dz)[:, None, None].astype(np.float32)
            lab, theta = body.labels(X, Y, Z)
            acc += body.hu_volume(lab, con, tex, theta, rng)
            if lab_keep is not None and (n_sub == 1 or s == n_sub // 2):
                lab_keep[ks] = lab
        vol[ks] = acc / n_sub
    # Reconstruction kernel: in-plane blur, then correlated noise scaled to the patient size.
    vol = ndimage.gaussian_filter(vol, (0, psf_mm / px, psf_mm / px))
    clean = vol.copy() if keep_arrays else None
    sigma = float(u(7.0, 18.0)) * (bp["half_width_mm"] / 160.0) * np.sqrt(2.5 / thick) ** 0.5
    vol += A.ct_noise(vol.shape, px, sigma, KERNELS[kern], rng)
    # World geometry: body frame + table position (LPS; z offset arbitrary, axial, feet-first or head-first).
    z0 = float(u(-600, -100))
    origin = np.array([xs[0], ys[0], z_bot + z0])
    geom = Geometry(row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]), spacing=(thick, px, px),
                    shape=vol.shape, origin=origin)
    desc_phase = {"non_contrast": ["ABD NON CON", "Abdomen native", "WO CONTRAST ABD", "Abdomen plain"],
                  "arterial": ["ABD ARTERIAL", "Abdomen arterial phase", "Late arterial ABD"],
                  "portal_venous": ["ABD PORTAL VENOUS", "Abdomen PV", "Abdomen venous phase"],
                  "delayed": ["ABD DELAYED", "Abdomen delayed 3min", "Abdomen late phase"]}[ph]
    desc = f"{rng.choice(desc_phase)} {thick:g}mm {kern}"
    header: dict[str, Any] = {
        "SeriesDescription": desc, "SeriesNumber": int(rng.integers(2, 12)),
        "KVP": f"{rng.choice([100, 120, 120, 140]):g}", "ConvolutionKernel": kern,
        "SliceThickness": f"{thick:g}", "SpacingBetweenSlices": f"{thick:g}",
        "XRayTubeCurrent": int(u(120, 450)), "PatientPosition": str(rng.choice(["FFS", "HFS"])),
        "ReconstructionDiameter": f"{dfov:.1f}",
    }
    if ph != "non_contrast":
        header["ContrastBolusAgent"] = str(rng.choice(["IOMEPROL 400", "Iohexol 350", "OMNIPAQUE 350", "Ultravist"]))
        header["ContrastBolusRoute"] = "IV"
    bpe = rng.choice(["ABDOMEN", None], p=[0.8, 0.2])
    if bpe:
        header["BodyPartExamined"] = str(bpe)
    missing = label if task == "coverage" and label != "full" else ""
    prov = {"body": bp, "contrast": con, "tissue_hu": {k: round(v, 1) for k, v in tex.items()},
            "coverage": {**dist, "liver_dome_z_mm": round(top_req, 2), "kidney_lower_pole_z_mm": round(bot_req, 2),
                         "first_slice_z_mm": round(z_bot, 2), "last_slice_z_mm": round(z_top, 2),
                         "top_margin_drawn_mm": round(top_margin, 2), "bottom_margin_drawn_mm": round(bot_margin, 2)},
            "slice_thickness_mm": thick, "n_sub_slices": n_sub, "kernel": kern, "kernel_fc_per_mm": KERNELS[kern],
            "psf_mm": round(psf_mm, 3), "noise_sigma_hu": round(sigma, 2), "pixel_mm": round(px, 4),
            "dfov_mm": round(dfov, 1), "geometry": geom.to_dict(), "table_z_offset_mm": round(z0, 1)}
    case = CTCase(volume=vol, geom=geom, header=header, label=label, phase=ph,
                  enhancement=con["enhancement"], missing=missing, provenance=prov)
    if keep_arrays:
        case.labels, case.clean = lab_keep, clean
    return case
