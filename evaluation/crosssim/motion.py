"""Rigid-motion k-space model in the acquisition's own geometry.

Each phase-encode line (2D: ky of every slice, acquired interleaved across slices within a TR; 3D: a (ky, kz)
pair, in-plane phase encode as the outer loop) gets an acquisition time in [0, 1] from the ordering
(linear, centric, or segmented/interleaved shots as in TSE and MPRAGE). The object is rendered in each
distinct rotated pose (few, piecewise constant) and Fourier transformed; every line takes its k-space values
from the pose active at its time. Translations, including periodic ones (breathing, pulsation: ghosts at
N/period lines), are applied exactly as per-line phase ramps (Fourier shift theorem), so they vary line by line.
Readout (frequency encode) is instantaneous: motion never varies along it, so artefacts spread along PE only.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pe_axes(acq: str, pe_dir: str) -> tuple[int, int | None, int]:
    """(in-plane phase-encode axis, second phase-encode axis for 3D or None, readout axis) of a [z, y, x]
    volume. DICOM InPlanePhaseEncodingDirection ROW = phase encoded along a row (column index, x, axis 2);
    COL = along a column (row index, y, axis 1)."""
    pe = 2 if pe_dir == "ROW" else 1
    fe = 1 if pe == 2 else 2
    return pe, (0 if acq == "3D" else None), fe


def line_times(n_pe: int, n_par: int | None, ordering: str, n_shots: int) -> np.ndarray:
    """Acquisition time in [0, 1) of each phase-encode line: shape (n_pe,) or (n_par, n_pe) for 3D.

    - linear: ky from -N/2 to N/2 (outer loop for 3D; partitions inner)
    - centric: ky ordered by |ky| (3D: elliptical centric over (ky, kz))
    - segmented: ``n_shots`` shots, shot s acquires ky = s, s + n_shots, ... (TSE/segmented interleaving)
    """
    ky = np.arange(n_pe) - n_pe // 2
    if ordering == "centric" and n_par is not None:
        kz = np.arange(n_par) - n_par // 2
        r = np.sqrt((ky[None, :] / max(n_pe, 1)) ** 2 + (kz[:, None] / max(n_par, 1)) ** 2)
        rank = np.argsort(np.argsort(r.ravel(), kind="stable"), kind="stable").reshape(r.shape)
        return rank / r.size
    if ordering == "centric":
        order = np.argsort(np.abs(ky) + 0.1 * (ky < 0), kind="stable")
    elif ordering == "segmented":
        order = np.concatenate([np.arange(s, n_pe, n_shots) for s in range(n_shots)])
    else:
        order = np.arange(n_pe)
    rank_pe = np.empty(n_pe)
    rank_pe[order] = np.arange(n_pe)
    if n_par is None:
        return rank_pe / n_pe
    return (rank_pe[None, :] * n_par + np.arange(n_par)[:, None]) / (n_pe * n_par)


def draw_motion(rng: np.random.Generator, amplitude: float, acq: str) -> dict[str, Any]:
    """Motion parameters: ``amplitude`` ~ peak displacement in mm / rotation in degrees."""
    u = rng.uniform
    n_events = int(rng.integers(1, 4))
    times = sorted(float(u(0.05, 0.95)) for _ in range(n_events))
    events = []
    for t in times:
        rot = (rng.normal(0, 1, 3) * amplitude * np.array([1.0, 0.5, 0.5])).round(3).tolist()  # nodding dominates
        tr = (rng.normal(0, 1, 3) * amplitude * 0.8).round(3).tolist()
        events.append({"t": round(t, 4), "rot_deg": rot, "trans_mm": tr})
    periodic = None
    if rng.random() < 0.4:
        d = rng.normal(0, 1, 3)
        periodic = {"amp_mm": round(float(u(0.2, 1.0) * amplitude), 3), "period_lines": round(float(u(3.0, 16.0)), 2),
                    "phase": round(float(u(0, 2 * np.pi)), 3), "dir": (d / np.linalg.norm(d)).round(4).tolist()}
    return {"events": events, "periodic": periodic, "ordering": str(rng.choice(["linear", "centric", "segmented"])),
            "n_shots": int(rng.integers(4, 24)), "amplitude": round(float(amplitude), 4)}


def scale_motion(m: dict[str, Any], f: float) -> dict[str, Any]:
    out = {**m, "amplitude": round(m["amplitude"] * f, 4)}
    out["events"] = [{"t": e["t"], "rot_deg": [round(v * f, 4) for v in e["rot_deg"]],
                      "trans_mm": [round(v * f, 4) for v in e["trans_mm"]]} for e in m["events"]]
    if m["periodic"]:
        out["periodic"] = {**m["periodic"], "amp_mm": round(m["periodic"]["amp_mm"] * f, 4)}
    return out


def corrupt(render, geom, acq: str, pe_dir: str, motion: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Compose the k-space of a moving object.

    ``render(rot_deg, trans_mm)`` returns the (bias-weighted, noise-free) image of the object in a pose
    (rotation about the head centre; the through-plane translation of 2D acquisitions is passed to it too).
    Returns (corrupted complex image, reference magnitude image of the pose that acquired the k-space centre,
    timing info)."""
    pe, par, fe = pe_axes(acq, pe_dir)
    shape = geom.shape
    n_pe = shape[pe]
    n_par = shape[par] if par is not None else None
    t = line_times(n_pe, n_par, motion["ordering"], motion["n_shots"])  # (n_pe,) or (n_par, n_pe)
    # pose index per line: events are piecewise-constant poses; pose 0 = start position
    ev = motion["events"]
    pose_of = np.searchsorted([e["t"] for e in ev], t, side="right")
    axes = (0, 1, 2) if acq == "3D" else (1, 2)
    # k-space centre time
    if n_par is None:
        t_centre = float(t[n_pe // 2])
    else:
        t_centre = float(t[n_par // 2, n_pe // 2])
    centre_pose = int(np.searchsorted([e["t"] for e in ev], t_centre, side="right"))
    # cumulative poses (each event moves from the previous pose)
    poses = [([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])]
    for e in ev:
        r0, t0 = poses[-1]
        poses.append(([a + b for a, b in zip(r0, e["rot_deg"])], [a + b for a, b in zip(t0, e["trans_mm"])]))
    # Translation handled as a phase ramp, except the through-plane part for 2D (it changes the excited anatomy).
    normal, col, row = geom.normal, geom.col_dir, geom.row_dir
    k = np.zeros(shape, np.complex64)
    ref = None
    freqs = [np.fft.fftfreq(n, d=s) for n, s in zip(shape, geom.spacing)]  # cycles/mm per axis
    per = motion.get("periodic")
    for pi, (rot, tr) in enumerate(poses):
        sel = pose_of == pi
        if not sel.any() and pi != centre_pose:
            continue
        tr = np.asarray(tr, float)
        through = float(np.dot(tr, normal)) if acq == "2D" else 0.0
        img = render(rot, (normal * through).tolist())
        if pi == centre_pose:
            ref = np.abs(img)  # phase ramps below move it exactly; the reference keeps its own position
            ref_shift = tr - normal * through
        if not sel.any():
            continue
        kk = np.fft.fftn(img, axes=axes)
        # put the selection mask in k-space index layout (fft order): lines are indexed by (par, pe)
        sel_full = _line_mask(sel, shape, pe, par, n_pe, n_par)
        k[sel_full] = kk[sel_full]
        del kk
    # translation phase ramps, line by line: pose translation (in-plane) + periodic displacement
    tr_lines = np.zeros(t.shape + (3,))
    for pi, (_rot, tr) in enumerate(poses):
        trv = np.asarray(tr, float)
        if acq == "2D":
            trv = trv - normal * float(np.dot(trv, normal))
        tr_lines[pose_of == pi] = trv
    if per:
        n_lines = t.size
        disp = per["amp_mm"] * np.sin(2 * np.pi * t * n_lines / per["period_lines"] + per["phase"])
        d = np.asarray(per["dir"], float)
        if acq == "2D":
            d = d - normal * float(np.dot(d, normal))
        tr_lines = tr_lines + disp[..., None] * d
    # displacement in array axes (mm along z, y, x)
    comp = np.stack([tr_lines @ normal, tr_lines @ col, tr_lines @ row], axis=-1)
    phase = np.zeros(shape, np.float32)
    # readout axis contributes k_fe * shift_fe for every sample of the line: build from broadcasting
    fz, fy, fx = (f.astype(np.float32) for f in freqs)
    kgrid = [fz[:, None, None], fy[None, :, None], fx[None, None, :]]
    for a in range(3):
        if a not in axes:
            continue
        shift = _broadcast_lines(comp[..., a], shape, pe, par, n_pe, n_par)
        phase = phase + (kgrid[a] * shift).astype(np.float32)
    k *= np.exp(-2j * np.pi * phase).astype(np.complex64)
    img = np.fft.ifftn(k, axes=axes).astype(np.complex64)
    if ref is not None and np.any(ref_shift):
        kr = np.fft.fftn(ref.astype(np.complex64), axes=axes)
        ph = sum(kgrid[a] * float(np.dot(ref_shift, (normal, col, row)[a])) for a in axes)
        ref = np.abs(np.fft.ifftn(kr * np.exp(-2j * np.pi * ph), axes=axes)).astype(np.float32)
    info = {"t_centre": round(t_centre, 4), "centre_pose": centre_pose,
            "event_t_minus_centre": [round(e["t"] - t_centre, 4) for e in ev], "pe_axis": pe, "fe_axis": fe}
    return img, ref, info  # type: ignore[return-value]


def _fft_layout(n: int) -> np.ndarray:
    """Map from centred line index (0..n-1 = ky -n/2..) to numpy fft index."""
    ky = np.arange(n) - n // 2
    return np.mod(ky, n)


def _line_mask(sel: np.ndarray, shape, pe: int, par, n_pe: int, n_par) -> np.ndarray:
    return _broadcast_lines(sel, shape, pe, par, n_pe, n_par).astype(bool) & np.ones(shape, bool)


def _broadcast_lines(vals: np.ndarray, shape, pe: int, par, n_pe: int, n_par) -> np.ndarray:
    """Line values (centred index layout: (n_pe,) or (n_par, n_pe)) -> array broadcastable to ``shape`` in
    fft index layout, constant along the readout (and, for 2D, along slices)."""
    idx_pe = _fft_layout(n_pe)
    if par is None:
        v = np.empty(n_pe, vals.dtype)
        v[idx_pe] = vals
        bshape = [1, 1, 1]
        bshape[pe] = n_pe
        return v.reshape(bshape)
    idx_par = _fft_layout(n_par)
    v = np.empty((n_par, n_pe), vals.dtype)
    v[np.ix_(idx_par, idx_pe)] = vals
    bshape = [1, 1, 1]
    bshape[par] = n_par
    bshape[pe] = n_pe
    return v.reshape(bshape)


def artefact_to_noise(corrupted_mag: np.ndarray, ref_mag: np.ndarray, head_mask: np.ndarray, sigma: float) -> float:
    """RMS change of the magnitude image inside the head, in units of the noise sigma."""
    d = (corrupted_mag - ref_mag)[head_mask]
    return float(np.sqrt(np.mean(d * d)) / sigma) if d.size else 0.0
