"""Model-based checks: shared machinery for motion (MR), contrast phase (CT) and coverage (brain MR, abdominal CT).

Each check runs the promoted ONNX model for its task from :mod:`scanqc.models` (or the ``ctx.infer``
seam the service injects), on the input built by :func:`scanqc.preprocessing.preprocess` with the
parameters stored in the model's metadata. Where a check does not apply (modality, body region, a
volume too thin for a 3D model) or no model is installed, it says ``skipped`` and why; it never
invents a score. The concrete checks live in :mod:`scanqc.checks.motion`,
:mod:`scanqc.checks.contrast_phase` and :mod:`scanqc.checks.coverage`.

Without a guideline rule the body region is inferred from ``BodyPartExamined``, the series
description and, as a last resort, the image itself (in-plane size: a head is < ~260 mm across, an
abdomen wider), with the modality as the tie-breaker (MR -> brain, CT -> abdomen: the regions the
models were trained on).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from scanqc.cache import cached
from scanqc.checks.base import CheckContext
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.preprocessing import BlockMeans, InplanePass
from scanqc.series import Series
from scanqc.verdict import CheckResult

APPLIES_TO = {"motion": ("MR",), "contrast_phase": ("CT",), "coverage": ("MR", "CT")}
MIN_VOXELS_PER_AXIS = 8  # thinner stacks (localisers, single slices) are not 3D volumes a model can judge
# What each task's models were trained on, when a model's metadata carries no ``domain`` of its own: voxel size and
# scanned extent of the training data (a whole head or abdomen). A series outside it is skipped with the reason,
# never guessed at. ``max_spacing_mm``: coarsest voxel edge; ``min_extent_mm``: shortest scanned side.
DEFAULT_DOMAINS: dict[str, dict[str, Any]] = {
    "motion": {"modalities": ["MR"], "regions": ["brain"], "max_spacing_mm": 7.0, "min_extent_mm": 80.0},
    "contrast_phase": {"modalities": ["CT"], "regions": ["abdomen"], "max_spacing_mm": 8.0, "min_extent_mm": 80.0},
    "coverage": {"modalities": ["MR", "CT"], "regions": ["brain", "abdomen"], "max_spacing_mm": 8.0,
                 "min_extent_mm": 40.0},
}
OUTSIDE = "outside the model's domain"

BRAIN_PARTS = {"HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK"}
ABDOMEN_PARTS = {"ABDOMEN", "ABDOMENPELVIS", "ABDOMEN_PELVIS", "CHEST_ABDOMEN", "CHESTABDOMEN", "CHESTABDPELVIS",
                 "CHEST_ABDOMEN_PELVIS", "TORSO", "CAP", "LIVER", "KIDNEY", "PANCREAS", "WHOLEBODY"}
_BRAIN_RE = re.compile(r"brain|head|neuro|cran|\bt1w?\b|\bt2w?\b|flair|mprage|spgr|\bswi\b", re.I)
_ABDOMEN_RE = re.compile(r"abd|liver|hepat|renal|kidney|pancrea|\bcap\b|chest.?abd|torso|venous|arterial|"
                         r"portal|delayed|\bpv\b", re.I)


def infer_region(series: Series, ctx: CheckContext) -> tuple[str | None, str]:
    """("brain" | "abdomen" | None, how it was decided). None means another body region."""
    rule = ctx.rule
    if rule is not None and rule.coverage:
        return ("brain" if rule.coverage == "whole_brain" else "abdomen"), f"guideline rule {rule.id!r}"
    if rule is not None and rule.body_part:
        parts = set(rule.body_part)
        if parts & BRAIN_PARTS:
            return "brain", f"guideline rule {rule.id!r} body_part"
        if parts & ABDOMEN_PARTS:
            return "abdomen", f"guideline rule {rule.id!r} body_part"
    part = str(series.get("BodyPartExamined") or "").strip().upper().replace(" ", "_")
    if part:
        if part in BRAIN_PARTS:
            return "brain", f"BodyPartExamined {part}"
        if part in ABDOMEN_PARTS:
            return "abdomen", f"BodyPartExamined {part}"
        return None, f"BodyPartExamined {part}"
    desc = series.description or ""
    if _BRAIN_RE.search(desc) and not _ABDOMEN_RE.search(desc):
        return "brain", f"series description {desc!r}"
    if _ABDOMEN_RE.search(desc):
        return "abdomen", f"series description {desc!r}"
    vol = series.volume
    modality = (series.modality or "").upper()
    if vol is not None:
        from scanqc.preprocessing import canonicalize

        arr, spacing = canonicalize(vol)
        lr_mm = arr.shape[2] * spacing[2]
        if modality == "CT" and lr_mm < 260:
            return "brain", f"image {lr_mm:.0f} mm across (head-sized)"
    if modality == "MR":
        return "brain", "MR without body-part information (default: brain)"
    if modality == "CT":
        return "abdomen", "CT without body-part information (default: abdomen)"
    return None, "unknown modality"


class ModelCheck:
    """Base class: model lookup, applicability, cached preprocessing and inference for one task."""

    task: str = ""

    def __init__(self, task: str | None = None) -> None:
        if task:
            self.task = task
        if self.task not in APPLIES_TO:
            raise ValueError(f"unknown model task {self.task!r}; known: {sorted(APPLIES_TO)}")
        self.name = self.task

    # -- helpers shared by the concrete checks -------------------------------------------------
    def model(self, ctx: CheckContext) -> Any:
        """The installed model for this task from ``ctx.models`` or the process-wide registry."""
        reg = ctx.models
        if isinstance(reg, dict):
            return reg.get(self.task)
        if reg is None:
            from scanqc.models import default_registry

            reg = default_registry()
        return reg.get(self.task)

    def not_applicable(self, series: Series) -> CheckResult | None:
        modality = (series.modality or "").upper()
        if modality not in APPLIES_TO[self.task]:
            return CheckResult.skipped(f"{self.task} check applies to {'/'.join(APPLIES_TO[self.task])}, "
                                       f"not {modality or 'unknown modality'}")
        vol = series.volume
        if vol is None:
            return CheckResult.skipped("no image volume")
        if min(vol.shape) < MIN_VOXELS_PER_AXIS:
            return CheckResult.skipped(f"volume {'x'.join(map(str, vol.shape))} is too thin for a 3D model "
                                       f"(needs >= {MIN_VOXELS_PER_AXIS} voxels per axis)")
        return None

    def outside_domain(self, series: Series, model: Any) -> str | None:
        """Why ``series`` is outside what ``model`` was trained on (its metadata's ``domain``), or None."""
        meta = getattr(model, "metadata", None)
        dom = (meta.get("domain") if isinstance(meta, dict) else None) or DEFAULT_DOMAINS[self.task]
        vol = series.volume
        if vol is None:
            return None
        spacing = [float(s) for s in vol.spacing]
        extent = [n * s for n, s in zip(vol.shape, spacing)]
        if "max_spacing_mm" in dom and max(spacing) > float(dom["max_spacing_mm"]):
            return (f"voxel size {'x'.join(f'{s:.3g}' for s in spacing)} mm; trained up to "
                    f"{float(dom['max_spacing_mm']):g} mm")
        if "min_extent_mm" in dom and min(extent) < float(dom["min_extent_mm"]):
            return (f"scanned extent {'x'.join(f'{e:.0f}' for e in extent)} mm; trained on volumes of at least "
                    f"{float(dom['min_extent_mm']):g} mm per side")
        return None

    def predict(self, series: Series, ctx: CheckContext, model: Any) -> dict[str, Any]:
        """Preprocess (cached per series and spec), run the model or ``ctx.infer``, calibrate."""
        from scanqc.preprocessing import preprocess

        spec = model.spec
        modality = (series.modality or "").upper()
        key = "pre:" + json.dumps(spec.to_dict(), sort_keys=True) + modality
        assert series.volume is not None
        vol = series.volume
        x = cached(ctx.cache, key, lambda: preprocess(vol, spec, modality, cache=ctx.cache))
        batch = x[None]
        logits = ctx.infer(self.task, batch) if ctx.infer is not None else model.run(batch)
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim == 1:
            logits = logits[None]
        out = model.postprocess(logits)[0]
        out["model_version"] = model.version
        return out

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        skip = self.not_applicable(series)
        if skip is not None:
            return skip
        try:
            model = self.model(ctx)
        except ScanQCError as exc:
            return CheckResult.skipped(f"{self.task} model unusable: {exc.code.value}: {exc.message}")
        if model is None:
            return CheckResult.skipped(f"no {self.task} model installed")
        why = self.outside_domain(series, model)
        if why is not None:
            return CheckResult.skipped(f"{OUTSIDE} ({why})")
        return self.evaluate(series, ctx, model)

    def input_grids(self, model: Any) -> dict[str, set[tuple[int, int]]]:
        """Per modality, the in-plane grids this check resamples series onto with ``model`` (anti-aliased
        ``fit`` inputs; a composite model's delegates included): see :func:`inplane_targets`."""
        out: dict[str, set[tuple[int, int]]] = {}
        delegates = (getattr(model, "metadata", None) or {}).get("delegate") or {}
        for mod_model in (model, *(model.for_modality(m) for m in delegates)):
            spec = getattr(mod_model, "spec", None)
            if spec is None or spec.mode != "fit" or not spec.antialias:
                continue
            for mod in spec.modalities:
                if mod_model is model and mod.upper() in delegates:
                    continue  # that modality goes to the delegate
                out.setdefault(mod.upper(), set()).add((int(spec.shape[1]), int(spec.shape[2])))
        return out

    def evaluate(self, series: Series, ctx: CheckContext, model: Any) -> CheckResult:  # pragma: no cover
        raise ScanQCError(ErrorCode.INTERNAL, f"{type(self).__name__} must implement evaluate()")


def model_checks() -> list[ModelCheck]:
    """The three model checks, in verdict order."""
    from scanqc.checks.contrast_phase import ContrastPhaseCheck
    from scanqc.checks.coverage import CoverageCheck
    from scanqc.checks.motion import MotionCheck

    return [MotionCheck(), ContrastPhaseCheck(), CoverageCheck()]


def inplane_targets(models: Any = None) -> dict[str, tuple[InplanePass, ...]]:
    """Per modality, the in-plane passes of the installed models: the grids of their anti-aliased ``fit``
    inputs, and the abdominal localisation's block means on CT (contrast phase 2.1 and abdominal coverage share
    it). What the DICOM receiver and the folder reader make of each slice as it arrives
    (``scanqc.ingest.SeriesAssembler(inplane=...)``)."""
    from scanqc.checks import abdomen_seg

    out: dict[str, set[InplanePass]] = {}
    ctx = CheckContext(models=models)
    for check in model_checks():
        try:
            model = check.model(ctx)
        except ScanQCError:
            continue
        if model is None:
            continue
        for mod, grids in check.input_grids(model).items():
            out.setdefault(mod, set()).update(grids)
    if abdomen_seg.available():
        out.setdefault("CT", set()).add(BlockMeans(abdomen_seg.DETAIL_MM))
    return {m: tuple(sorted(g, key=repr)) for m, g in out.items()}
