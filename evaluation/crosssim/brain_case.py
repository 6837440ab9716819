"""One MR head case: anatomy, pose, sequence, geometry (coverage), motion, noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import head as H
from . import motion as M
from . import mr
from .dicomio import Geometry
from .fields import rotation

# Motion labels by how visible the artefact is, from two numbers on the noise-free images (inside the head):
# ANR = RMS change / noise sigma (is it visible above the noise?) and ASR = RMS change / median brain signal
# (how much of the image it corrupts). Fixed before any model was scored on this generator (docs/crosssim.md).
ANR_NONE_MAX = 0.3  # below this a moved case is indistinguishable from clean: labelled none
ANR_MILD_MIN = 0.8  # mild: clearly visible above the noise ...
ASR_MILD_MAX = 0.12  # ... and corrupting < 12 % of the signal: diagnostic
ASR_SEVERE_MIN = 0.16  # severe: >= 16 % of the signal (and >= 2 sigma): non-diagnostic
ANR_SEVERE_MIN = 2.0
SNR_RANGE = (12.0, 45.0)  # white-matter SNR of clinical structural scans
AMP_MAX = {"none": 1.5, "mild": 3.0, "severe": 10.0}  # largest motion amplitude (mm / degrees, 1 sd) per label
COVER_MIN_MM = 3.0  # a full case keeps the brain >= this inside the outer slice/pixel centres; a cut is >= this


@dataclass
class MRCase:
    volume: np.ndarray  # magnitude [z, y, x]
    geom: Geometry
    header: dict[str, Any]
    label: str
    severity: float | None
    missing: str
    provenance: dict[str, Any]
    clean: np.ndarray | None = None  # noise-free reference (tests)
    corrupted: np.ndarray | None = None  # noise-free corrupted magnitude (tests)
    reference: np.ndarray | None = None  # noise-free image of the pose that acquired the k-space centre
    head_mask: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    labels_acq: np.ndarray | None = None


def _severity(label: str, asr: float) -> float:
    """[0, 1]: 0 none; mild 0.15-0.4 and severe 0.6-1.0, log-scaled by the artefact-to-signal ratio."""
    if label == "none":
        return 0.0
    if label == "mild":
        return round(0.15 + 0.25 * float(np.clip(np.log(asr / 0.015) / np.log(ASR_MILD_MAX / 0.015), 0, 1)), 4)
    return round(0.6 + 0.4 * float(np.clip(np.log(asr / ASR_SEVERE_MIN) / np.log(0.6 / ASR_SEVERE_MIN), 0, 1)), 4)


def motion_label(anr: float, asr: float) -> str | None:
    """The label a corrupted image earns; None in the gaps between bands (redrawn)."""
    if anr < ANR_NONE_MAX:
        return "none"
    if anr >= ANR_MILD_MIN and asr < ASR_MILD_MAX:
        return "mild"
    if asr >= ASR_SEVERE_MIN and anr >= ANR_SEVERE_MIN:
        return "severe"
    return None


def _target_asr(label: str, rng: np.random.Generator, sigma_rel: float) -> float:
    """Artefact-to-signal ratio to aim for when rescaling a draw (sigma_rel = noise sigma / brain signal)."""
    if label == "none":
        return float(rng.uniform(0.05, 0.2)) * sigma_rel
    if label == "mild":
        lo = max(ANR_MILD_MIN * sigma_rel * 1.15, 0.015)
        return float(np.exp(rng.uniform(np.log(lo), np.log(ASR_MILD_MAX * 0.9))))
    return float(np.exp(rng.uniform(np.log(max(ASR_SEVERE_MIN * 1.15, ANR_SEVERE_MIN * sigma_rel * 1.2)),
                                    np.log(0.5))))


def coverage_distances(geom: Geometry, pts_brain: np.ndarray) -> dict[str, float]:
    """Distance (mm) from the required anatomy to the superior and inferior outermost slice/pixel centres
    along the axis that carries S-I; negative = the anatomy extends beyond that end (cut)."""
    ax, sgn = mr.si_axis(geom)
    d = [geom.normal, geom.col_dir, geom.row_dir][ax] * sgn  # grows towards superior
    A = geom.index_to_lps()
    first = float(A[:, 3] @ d)
    last = float((A[:, 3] + A[:, ax] * (geom.shape[ax] - 1)) @ d)
    sup_end, inf_end = max(first, last), min(first, last)
    proj = pts_brain @ d
    return {"brain_to_superior_end_mm": round(sup_end - float(proj.max()), 2),
            "brain_to_inferior_end_mm": round(float(proj.min()) - inf_end, 2),
            "si_axis": ["slice", "row", "column"][ax]}


def _coverage_label(dist: dict[str, float]) -> str | None:
    s, i = dist["brain_to_superior_end_mm"], dist["brain_to_inferior_end_mm"]
    if s >= COVER_MIN_MM and i >= COVER_MIN_MM:
        return "full"
    if s <= -COVER_MIN_MM and i >= COVER_MIN_MM:
        return "superior"
    if i <= -COVER_MIN_MM and s >= COVER_MIN_MM:
        return "inferior"
    return None  # ambiguous (touching) or both: redraw


def make_mr_case(seed: int, task: str, label: str, grid_mm: float = 1.6, max_inplane: int = 160,
                 keep_arrays: bool = False, brain_source: str | None = None, plane: str | None = None,
                 sequence: str | None = None, acq: str | None = None, pe_dir: str | None = None,
                 motion_override: dict | None = None) -> MRCase:
    rng = np.random.default_rng(seed)
    u = rng.uniform
    src = brain_source or str(rng.choice(["procedural", "mni152"], p=[0.6, 0.4]))
    # Coverage cases below the foramen magnum need a neck; otherwise a neck is in about half of the heads.
    neck = bool(rng.random() < 0.55)
    hp = H.draw_head_params(rng, neck, src)
    head = H.build_head(rng, hp, h=grid_mm)
    scale = np.clip(u(0.88, 1.12) * (1 + rng.normal(0, 0.03, 3)), 0.84, 1.18)
    ang = [u(-14, 14), u(-6, 6), u(-8, 8)]  # pitch (nodding, about L-R), roll, yaw
    centre = rng.normal(0, 8, 3)
    pose = mr.Pose(R=rotation(*ang), centre=centre, scale=scale)
    seq = mr.draw_sequence(rng, sequence, acq)
    pl = plane or str(rng.choice(["axial", "sagittal", "coronal"], p=[0.5, 0.3, 0.2]))
    pts_head = mr.head_points(head, head.labels > 0, pose, step=3)
    pts_brain = mr.head_points(head, head.brain, pose, step=2)
    # S-I extent of the field of view. Superior end: from the scalp (tight, 3-8 mm of air, to generous) or,
    # for a superior cut, inside the brain. Inferior end: below the brain bottom (foramen magnum/cerebellum),
    # far into the neck when there is one, or a cut above it.
    cover = {"superior": label == "superior", "inferior": label == "inferior"} if task == "coverage" else {}
    si = None
    for _attempt in range(12):
        if cover.get("superior"):
            sup_pts, sup_margin = pts_brain, -float(np.exp(u(np.log(4.5), np.log(50.0))))
        else:
            tight = rng.random() < (0.4 if task == "coverage" else 0.25)
            sup_pts, sup_margin = pts_head, float(u(3.0, 8.0) if tight else u(8.0, 35.0))
        if cover.get("inferior"):
            inf_margin = -float(np.exp(u(np.log(4.5), np.log(50.0))))
        else:
            inf_margin = float(u(6.0, 110.0) if neck else u(6.0, 16.0))
        si = {"sup_pts": sup_pts, "sup_margin": sup_margin, "inf_pts": pts_brain, "inf_margin": inf_margin,
              "sup_ref": "brain" if cover.get("superior") else "scalp"}
        geom, geo = mr.draw_geometry(rng, seq, pl, pts_head, si_spec=si, max_inplane=max_inplane)
        dist = coverage_distances(geom, pts_brain)
        got = _coverage_label(dist)
        want = label if task == "coverage" else "full"
        if got == want:
            break
    else:
        raise RuntimeError(f"seed {seed}: could not place a {label} field of view")
    ax_si, sg_si = mr.si_axis(geom)
    d_si = [geom.normal, geom.col_dir, geom.row_dir][ax_si] * sg_si
    A = geom.index_to_lps()
    ends = [float(A[:, 3] @ d_si), float((A[:, 3] + A[:, ax_si] * (geom.shape[ax_si] - 1)) @ d_si)]
    dist["scalp_to_superior_end_mm"] = round(max(ends) - float((pts_head @ d_si).max()), 2)
    # Render: tissue contrast, slice profile, coil bias (fixed in the scanner frame).
    img_head = mr.render_intensity(head, seq, rng)
    thick = geo["slice_thickness_mm"]
    n_sub = max(1, int(np.ceil(thick / grid_mm))) if seq["acq"] == "2D" else 1
    bias_strength = float(u(0.05, 0.25))
    bias = mr.bias_field(geom, rng, bias_strength)
    pivot = pose.centre.copy()

    def render(rot_deg, trans_mm) -> np.ndarray:
        p = pose.moved(rot_deg, trans_mm, pivot)
        return mr.render_acquisition(img_head, head, p, geom, thick, n_sub) * bias

    mask_head = mr.render_acquisition((head.labels > 0).astype(np.float32), head, pose, geom, thick, 1, 0) > 0.5
    mask_brain = mr.render_acquisition(head.brain.astype(np.float32), head, pose, geom, thick, 1, 0) > 0.5
    clean = render([0, 0, 0], [0, 0, 0])
    ref_signal = float(np.median(clean[mask_brain])) if mask_brain.any() else 1.0
    snr = float(np.exp(u(np.log(SNR_RANGE[0]), np.log(SNR_RANGE[1]))))
    sigma = ref_signal / snr
    pe_dir_v = pe_dir or str(rng.choice(["ROW", "COL"]))
    motion_prov: dict[str, Any] | None = None
    anr = 0.0
    corrupted = clean.astype(np.complex64)
    ref_mag = clean
    if task == "motion":
        moving = label != "none" or rng.random() < 0.3 or motion_override is not None
        if moving:
            target = _target_asr(label, rng, sigma / ref_signal)
            cap = AMP_MAX[label]
            amp = float(u(0.3, 1.5) if label != "severe" else u(1.5, 5.0))
            m = motion_override or M.draw_motion(rng, amp, seq["acq"])
            attempts = []
            for _attempt in range(8):
                corrupted, ref_mag, info = M.corrupt(render, geom, seq["acq"], pe_dir_v, m)
                anr = M.artefact_to_noise(np.abs(corrupted), ref_mag, mask_head, sigma)
                asr = anr * sigma / ref_signal
                attempts.append({"amplitude": m["amplitude"], "ordering": m["ordering"], "anr": round(anr, 3),
                                 "asr": round(asr, 4)})
                if motion_label(anr, asr) == label or motion_override is not None:
                    break
                # visibility scales about linearly with displacement for small motion: rescale and redo, within
                # physically plausible amplitudes; past the cap draw new motion (other timing/ordering) instead
                f = float(np.clip(target / max(asr, 1e-5), 0.1, 6.0))
                if m["amplitude"] * f > cap:
                    m = M.draw_motion(rng, float(u(0.5, 1.0)) * cap, seq["acq"])
                else:
                    m = M.scale_motion(m, f)
            else:
                raise RuntimeError(f"seed {seed}: motion artefact did not reach the {label} band")
            motion_prov = {**m, **info, "attempts": attempts}
        if motion_label(anr, anr * sigma / ref_signal) != label and motion_override is None:
            raise RuntimeError(f"seed {seed}: {label} case has artefact-to-noise {anr:.2f}")
    volume = mr.rician(corrupted, sigma, rng)
    if task == "motion":
        severity: float | None = _severity(label, anr * sigma / ref_signal)
    else:
        severity = None
    header = mr.mr_header(seq, geo, pe_dir_v, rng, series_number=int(rng.integers(2, 30)))
    missing = label if task == "coverage" and label != "full" else ""
    prov = {
        "head": hp, "pose": {"rot_deg": [round(a, 3) for a in ang], "scale": [round(float(s), 4) for s in scale],
                             "centre_mm": [round(float(c), 2) for c in centre]},
        "sequence": seq, "geometry": {**geo, **geom.to_dict()}, "phase_encode": pe_dir_v,
        "snr": round(snr, 2), "noise_sigma": round(sigma, 5), "bias_strength": round(bias_strength, 3),
        "coverage": {**dist, "sup_margin_drawn_mm": round(si["sup_margin"], 2), "sup_ref": si["sup_ref"],
                     "inf_margin_drawn_mm": round(si["inf_margin"], 2)},
        "motion": motion_prov, "artefact_to_noise": round(anr, 4),
        "artefact_to_signal": round(anr * sigma / ref_signal, 5), "brain_signal": round(ref_signal, 5),
        "grid_mm": grid_mm,
    }
    case = MRCase(volume=volume, geom=geom, header=header, label=label, severity=severity, missing=missing,
                  provenance=prov)
    if keep_arrays:
        case.clean, case.corrupted, case.head_mask, case.brain_mask = clean, np.abs(corrupted), mask_head, mask_brain
        case.reference = ref_mag
        lab = mr.render_acquisition(head.labels.astype(np.float32), head, pose, geom, thick, 1, order=0)
        case.labels_acq = lab
    return case
