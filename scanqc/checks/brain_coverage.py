"""Brain-MR coverage from geometry: locate the required brain, then measure where it meets the scanned extent.

Coverage models up to 2.0.0 classified the whole volume and learnt "what a cut head looks like"; a real head
with a tight but complete field of view (5-8 mm of air above the scalp) looked cut to them (issue 19). Here a
small segmentation network (coverage 2.1.0's ``model.onnx``, MONAI UNet trained on domain-randomised heads:
:mod:`scanqc.training.brain_mask`; SynthStrip-style, Hoopes et al., NeuroImage 2022) locates the *required*
brain (vertex to the bottom of the cerebellum) on the grid of :data:`SPEC`, and the decision is geometry:

- **Profile**: the largest connected component of the predicted mask (stray voxels and islands elsewhere in
  the head do not count), its cross-section per grid slice along the superior-inferior axis.
- **Cut**: an end is cut when the brain's cross-section in that end slice is at least ``cut_fraction`` of its
  largest cross-section. A brain that ends inside the scan shows at most the last sliver of the vertex cap or
  the cerebellar tonsils there; one cut by the field of view shows a substantial section. ``cut_fraction`` is
  chosen on validation draws of the training generator (a seed the network never saw), recorded in the
  metadata with its accuracy curve; never on a test set.
- **Distances**: how far the brain lies from the first (superior) and last (inferior) slice, in mm along the
  superior-inferior axis (one grid slice: the scanned extent / 80, 2.3-3.8 mm, is the resolution), the visible
  brain extent, and for a cut end the section left in the end slice with a rough estimate of what is missing
  (dome model: an ellipsoidal cap whose height follows from the section's share of the largest one).

numpy/scipy + onnxruntime only (check path).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scanqc.preprocessing import PreprocessSpec, canonicalize

#: The brain-mask network's input grid: the whole scanned extent fitted onto 80 superior-inferior samples
#: (2.3-3.8 mm over a 180-300 mm field of view: the axis the decision is made along) x 48 x 48 in-plane.
SPEC = PreprocessSpec(shape=(80, 48, 48), modalities=("MR",))
ONNX_NAME = "model.onnx"
POSTPROCESS = "brain_mask_geometry"  # metadata["postprocess"] of a coverage model that outputs a brain mask
REGION = "whole_brain"
LANDMARK = {"superior": "the vertex", "inferior": "the cerebellum / foramen magnum"}
# A semi-height of the brain relative to the geometric mean of its in-plane semi-axes (MNI152: ~65 mm vs ~77 mm):
# only for the rough "missing" estimate of a cut end, never for the decision.
_SEMI_HEIGHT_RATIO = 0.85


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def profile(prob: np.ndarray) -> np.ndarray:
    """Cross-section (grid voxels) of the largest brain component per slice, superior slice first."""
    m = largest_component(np.asarray(prob) >= 0.5)
    return m.reshape(len(m), -1).sum(1).astype(np.float64)


def end_fractions(prob: np.ndarray) -> tuple[float, float]:
    """(superior, inferior): brain cross-section in the end slice / the largest brain cross-section."""
    area = profile(prob)
    amax = float(area.max())
    if amax <= 0:
        return 0.0, 0.0
    return float(area[0] / amax), float(area[-1] / amax)


ENDS = ("superior", "inferior")


def cut_fractions(geometry: dict[str, Any]) -> dict[str, float]:
    """Per-end cut thresholds from ``metadata["geometry"]["cut_fraction"]`` (one number, or one per end)."""
    t = geometry["cut_fraction"]
    return {e: float(t[e] if isinstance(t, dict) else t) for e in ENDS}


def cut_score(fraction: float, threshold: float) -> float:
    """End-slice fraction on a [0, 1] scale where ``threshold`` maps to 0.5 (the shipped fail threshold), so
    evaluation and promotion read it like a probability (monotone: ROC AUC is the fraction's own)."""
    f, t = float(fraction), float(threshold)
    if f < t:
        return 0.5 * f / t
    return 0.5 + 0.5 * min(1.0, (f - t) / max(1.0 - t, 1e-6))


def outputs_from_logits(logits: np.ndarray, geometry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per case ``{missing_superior, missing_inferior, fractions}`` from brain-mask logits ``[N, 1, D, H, W]``."""
    t = cut_fractions(geometry)
    out = []
    for lg in np.asarray(logits, np.float32).reshape(-1, *SPEC.shape):
        s, i = end_fractions(lg >= 0.0)  # logit >= 0 <=> probability >= 0.5
        out.append({"missing_superior": cut_score(s, t["superior"]), "missing_inferior": cut_score(i, t["inferior"]),
                    "end_fraction": {"superior": round(s, 4), "inferior": round(i, 4)}})
    return out


def measure(prob: np.ndarray, si_mm: float, pixel_mm2: float, threshold: float | dict[str, float]
            ) -> dict[str, Any]:
    """Geometry of the located brain on a grid with ``si_mm`` per slice and ``pixel_mm2`` per in-plane voxel;
    ``threshold``: the cut fraction (one, or per end)."""
    thr = cut_fractions({"cut_fraction": threshold})
    m = largest_component(np.asarray(prob) >= 0.5)
    area = m.reshape(len(m), -1).sum(1).astype(np.float64)
    if area.max() <= 0:
        return {"found": False}
    idx = np.flatnonzero(area > 0)
    amax = float(area.max())
    frac = {"superior": float(area[0] / amax), "inferior": float(area[-1] / amax)}
    dist = {"superior": float(idx[0] * si_mm), "inferior": float((len(area) - 1 - idx[-1]) * si_mm)}
    semi_h = _SEMI_HEIGHT_RATIO * float(np.sqrt(amax * pixel_mm2 / np.pi))
    g: dict[str, Any] = {"found": True, "brain_extent_mm": round(float((idx[-1] - idx[0] + 1) * si_mm), 1),
                         "largest_section_cm2": round(amax * pixel_mm2 / 100.0, 1), "grid_slice_mm": round(si_mm, 2),
                         "end_fraction": {k: round(v, 4) for k, v in frac.items()}, "cut_fraction": thr,
                         "distance_mm": {k: round(v, 1) for k, v in dist.items()}, "cut": [], "end_section_cm2": {},
                         "missing_estimate_mm": {}}
    for e in ("superior", "inferior"):
        end_area = area[0] if e == "superior" else area[-1]
        if frac[e] >= thr[e]:
            g["cut"].append(e)
            g["end_section_cm2"][e] = round(float(end_area) * pixel_mm2 / 100.0, 1)
            # Ellipsoidal cap: section share f at depth h below the top: f = 1 - (1 - h/c)^2.
            g["missing_estimate_mm"][e] = round(semi_h * (1.0 - np.sqrt(max(0.0, 1.0 - min(frac[e], 1.0)))), 0)
    return g


def grid_geometry(volume: Any) -> tuple[float, float]:
    """(mm per grid slice along superior-inferior, mm^2 per in-plane grid voxel) of ``volume`` on :data:`SPEC`."""
    arr, spacing = canonicalize(volume)
    ext = [n * s for n, s in zip(arr.shape, spacing)]
    return ext[0] / SPEC.shape[0], (ext[1] / SPEC.shape[1]) * (ext[2] / SPEC.shape[2])


def action(missing: list[str]) -> str:
    ends = " and ".join(f"{e}ly to include {LANDMARK[e]}" for e in missing)
    return f"Extend the slab / field of view {ends}, then repeat the series before the patient leaves"


def brain_coverage(series: Any, ctx: Any, model: Any) -> Any:
    """The coverage verdict of a brain MR from the located brain (``model``: a coverage model whose metadata
    has ``postprocess: brain_mask_geometry``)."""
    from scanqc.checks.ml import OUTSIDE
    from scanqc.preprocessing import preprocess
    from scanqc.verdict import CheckResult

    vol = series.volume
    spec = model.spec
    key = "pre:brain_mask:" + str(spec.to_dict())
    x = ctx.cache.get(key)
    if x is None:
        x = preprocess(vol, spec, "MR", cache=ctx.cache)
        ctx.cache[key] = x
    # Local onnxruntime, not ``ctx.infer``: the service's batched runner for "coverage" is one model per task and
    # a composite's CT delegate would not match it.
    logits = model.run(x[None])
    prob = np.asarray(logits, np.float32).reshape(SPEC.shape) >= 0.0
    geo = model.metadata.get("geometry") or {}
    thr = cut_fractions(geo)
    si_mm, px_mm2 = grid_geometry(vol)
    g = measure(prob, si_mm, px_mm2, thr)
    details: dict[str, Any] = {"region": REGION, "method": "brain mask geometry", "model_version": model.version}
    if not g["found"]:
        return CheckResult.skipped(f"{OUTSIDE} (no brain located in this MR: not a head, or a contrast the brain "
                                   "mask was not trained on)", **details)
    missing = list(g["cut"])
    scores = {e: round(cut_score(g["end_fraction"][e], thr[e]), 4) for e in ENDS}
    details.update({"missing": missing, "probabilities": scores, "geometry": g})
    d = g["distance_mm"]
    where = f"brain {d['superior']:.0f} mm below the first slice and {d['inferior']:.0f} mm above the last slice"
    if missing:
        cut = "; ".join(f"{LANDMARK[e]} cut at the {e} end ({g['end_section_cm2'][e]:.0f} cm2 of brain in the "
                        f"end slice, {100 * g['end_fraction'][e]:.0f} % of its largest section; roughly "
                        f"{g['missing_estimate_mm'][e]:.0f} mm missing)" for e in missing)
        return CheckResult("fail", f"whole brain not fully covered: {cut}", max(scores.values()), action(missing),
                           details)
    return CheckResult("pass", f"whole brain fully covered ({where})", max(scores.values()), None, details)
