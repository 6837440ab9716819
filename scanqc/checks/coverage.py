"""Anatomical coverage: is the required region fully inside the scanned extent, and which end is cut.

Regions (guideline ``coverage``): ``whole_brain`` (vertex to foramen magnum / cerebellum, brain MR) and
``liver_dome_to_kidneys`` (abdominal CT). Without a rule the region follows from the header / image
(:func:`scanqc.checks.ml.infer_region`). The model sees the whole scanned extent padded at both ends
with a mask channel (see :mod:`scanqc.preprocessing`) and gives P(missing) per end; thresholds come
from validation data (95 % specificity for ``fail``). Anchors: TotalSegmentator body stats, Body Part
Regression (Yan et al. 2018). A coverage model whose metadata says ``postprocess: brain_mask_geometry``
(2.1.0) instead locates the brain on MR and decides from geometry (:mod:`scanqc.checks.brain_coverage`);
modalities listed in its ``delegate`` go to the model version named there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scanqc.checks.base import CheckContext
from scanqc.checks.ml import OUTSIDE, ModelCheck, infer_region
from scanqc.inference import COVERAGE_ENDS
from scanqc.series import Series
from scanqc.verdict import CheckResult

REGION_FOR = {"brain": "whole_brain", "abdomen": "liver_dome_to_kidneys"}
MODALITY_FOR = {"whole_brain": "MR", "liver_dome_to_kidneys": "CT"}
LANDMARK = {("whole_brain", "superior"): "the vertex", ("whole_brain", "inferior"): "the cerebellum / foramen magnum",
            ("liver_dome_to_kidneys", "superior"): "the liver dome",
            ("liver_dome_to_kidneys", "inferior"): "the lower poles of the kidneys"}


def coverage_action(region: str, missing: list[str]) -> str:
    ends = " and ".join(f"{e}ly to include {LANDMARK[(region, e)]}" for e in missing)
    what = "slab / field of view" if region == "whole_brain" else "scan range"
    return f"Extend the {what} {ends}, then repeat the series before the patient leaves"


class CoverageCheck(ModelCheck):
    task = "coverage"

    def input_grids(self, model: Any) -> dict[str, set[tuple[int, int]]]:
        from scanqc.checks import abdomen_coverage

        grids = super().input_grids(model)
        if abdomen_coverage.ENABLED:  # abdominal CT is decided from the located anatomy, not by a network
            grids.pop("CT", None)
        return grids

    def evaluate(self, series: Series, ctx: CheckContext, model: Any) -> CheckResult:
        region_kind, why = infer_region(series, ctx)
        region = ctx.rule.coverage if ctx.rule is not None and ctx.rule.coverage else REGION_FOR.get(region_kind or "")
        modality = (series.modality or "").upper()
        if region is None:
            return CheckResult.skipped(f"{OUTSIDE} (coverage model knows brain MR and abdominal CT only: {why})")
        if MODALITY_FOR[region] != modality:
            return CheckResult.skipped(f"coverage model for {region} is trained on {MODALITY_FOR[region]}, "
                                       f"not {modality}")
        if region == "liver_dome_to_kidneys":
            from scanqc.checks import abdomen_coverage

            if abdomen_coverage.ENABLED:  # by geometry from located anatomy (off until its figures beat the CNN's)
                return abdomen_coverage.abdominal_coverage(series, ctx)
        if getattr(model, "geometric", False) and region == "whole_brain":
            from scanqc.checks.brain_coverage import brain_coverage

            return brain_coverage(series, ctx, model)  # brain located, decided from geometry (coverage >= 2.1.0)
        if hasattr(model, "for_modality") and model.for_modality(modality) is not model:
            # e.g. coverage 2.1.0 hands abdominal CT to the CNN 2.0.0; run locally: the service's batched runner
            # (ctx.infer) holds the task's own model, not its delegate.
            model = model.for_modality(modality)
            ctx = dataclasses.replace(ctx, infer=None)
        if getattr(model, "geometric", False):
            return CheckResult.skipped(f"coverage model {model.version} locates the brain on MR only; no {region} "
                                       "model delegated")
        out = self.predict(series, ctx, model)
        thr = model.thresholds
        probs = {e: out[f"missing_{e}"] for e in COVERAGE_ENDS}
        fail = [e for e in COVERAGE_ENDS if probs[e] >= float(thr.get(f"missing_{e}", {}).get("fail", 0.5))]
        warn = [e for e in COVERAGE_ENDS if e not in fail
                and probs[e] >= float(thr.get(f"missing_{e}", {}).get("warn", 0.5))]
        score = max(probs.values())
        extra = {"region": region, "missing": fail, "probabilities": {e: round(p, 4) for e, p in probs.items()},
                 "model_version": out["model_version"]}
        if fail:
            cut = "; ".join(f"{LANDMARK[(region, e)]} cut at the {e} end (P={probs[e]:.2f})" for e in fail)
            return CheckResult("fail", f"{region.replace('_', ' ')} not fully covered: {cut}", score,
                               coverage_action(region, fail), extra)
        if warn:
            extra["uncertain"] = warn
            return CheckResult("warn", f"{region.replace('_', ' ')}: {' and '.join(warn)} end possibly cut "
                               f"(P={max(probs[e] for e in warn):.2f})", score,
                               "Review the first/last slices; " + coverage_action(region, warn)[0].lower()
                               + coverage_action(region, warn)[1:] + " if anatomy is cut", extra)
        return CheckResult("pass", f"{region.replace('_', ' ')} fully covered", score, None, extra)
