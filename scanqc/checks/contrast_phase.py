"""Contrast phase (abdominal CT): predicted phase, its probabilities, and enhancement quality.

The phase is always reported (``predicted``, ``probabilities`` over non-contrast, arterial, portal
venous, delayed); the check fails only against the phase the guideline expects (``expected_phase``,
or ``contrast: none`` -> non-contrast, ``contrast: required`` -> any enhanced phase). Suboptimal
enhancement (e.g. portal-venous liver below ~100 HU, arterial aorta below ~250 HU; see
docs/hu-reference.md) is a separate warning. Phase timing: Bae KT, Radiology 2010;256:32-61.

Models whose preprocessing mode is ``abdomen_hu`` (2.x) classify from HU *measured* at the located
aorta, IVC, liver and kidneys (:mod:`scanqc.checks.abdomen_anatomy`), the approach of TotalSegmentator's
``totalseg_get_phase``; the measurements go into the output (``measured_hu``) and the message, and a
series without liver or kidneys in view is ``skipped: outside the model's domain (...)``, never guessed.
"""

from __future__ import annotations

from typing import Any

from scanqc.checks.base import CheckContext
from scanqc.checks.ml import ModelCheck, infer_region
from scanqc.inference import PHASES
from scanqc.series import Series
from scanqc.verdict import CheckResult

_NAMES = {"non_contrast": "non-contrast", "arterial": "arterial", "portal_venous": "portal venous",
          "delayed": "delayed"}
_TIMING = {"arterial": "~35 s after injection start", "portal_venous": "~70 s after injection start",
           "delayed": "3-5 min after injection"}


def mismatch_action(expected: str, predicted: str) -> str:
    """What the technologist can do when the observed phase is not the protocol's."""
    if expected == "non_contrast":
        return ("Contrast is visible on a series the protocol requires unenhanced: check the series order and "
                "labelling; if the unenhanced scan was not acquired before injection, record a protocol deviation")
    if predicted == "non_contrast":
        return ("No contrast enhancement seen: check the IV line, injector and that contrast was given, then "
                f"repeat the {_NAMES[expected]} series ({_TIMING[expected]}) per protocol")
    if PHASES.index(predicted) < PHASES.index(expected):
        return (f"Scanned too early for the {_NAMES[expected]} phase: if the patient is still on the table, "
                f"acquire the {_NAMES[expected]} phase now ({_TIMING[expected]}); check the scan delay")
    return (f"Scanned too late for the {_NAMES[expected]} phase: it cannot be recovered without a new injection; "
            "record a protocol deviation and check the bolus-tracking trigger / scan delay before the next patient")


_SHOWN = (("aorta", "aorta"), ("ivc", "IVC"), ("liver", "liver"), ("kidney_p90", "renal cortex"),
          ("kidney_p25", "renal medulla"), ("kidney_p99_soft", "collecting system"))


def measured_text(hu: dict[str, float | None]) -> str:
    """'aorta 312 HU, IVC 74 HU, ...' for the structures that were measured (the collecting system: the kidneys'
    top percentile without the neighbouring bone, which sees excreted contrast; the rules' localisation has only
    the plain percentile). The urine segmented by abdomen_seg >= 1.1.0 is in ``measured_hu`` only."""
    hu = {**hu, "kidney_p99_soft": hu.get("kidney_p99_soft", hu.get("kidney_p99"))}
    return ", ".join(f"{name} {hu[k]:.0f} HU" for k, name in _SHOWN if hu.get(k) is not None)


ACTION_SUBOPTIMAL = ("Suboptimal enhancement: check the IV access, injection rate and volume and the bolus timing; "
                     "repeat per protocol if the study is not diagnostic")


def _outside_training_range(anat: Any, clf: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The measurements a classifier that clips its input (``classifier.clip``) saw outside its training range."""
    from scanqc.checks.abdomen_anatomy import FEATURES

    clip, names = clf.get("clip"), clf.get("features")
    if not clip or not names or not set(names) <= set(FEATURES):
        return {}
    f = anat.features()
    out = {}
    for n, lo, hi in zip(names, clip["min"], clip["max"]):
        v = float(f[FEATURES.index(n)])
        if v < lo or v > hi:
            out[n] = {"measured": round(v, 2), "trained_min": round(float(lo), 2), "trained_max": round(float(hi), 2)}
    return out


class ContrastPhaseCheck(ModelCheck):
    task = "contrast_phase"

    def evaluate(self, series: Series, ctx: CheckContext, model: Any) -> CheckResult:
        rule = ctx.rule
        expected = rule.expected_phase if rule is not None else None
        required = rule.contrast if rule is not None else None
        if expected is None and required == "none":
            expected = "non_contrast"
        region, why = infer_region(series, ctx)
        if region != "abdomen" and expected is None:
            return CheckResult.skipped(f"contrast phase model is trained on abdominal CT; this series is not "
                                       f"abdomen ({why})")
        anat = None
        if model.spec.mode == "abdomen_hu":
            from scanqc.checks.abdomen_anatomy import locate
            from scanqc.errors import ScanQCError

            assert series.volume is not None
            try:
                anat = locate(series.volume, ctx.cache, model.spec.localisation_network)
            except ScanQCError as exc:  # the network the model was fit on is not installed
                return CheckResult.skipped(f"contrast_phase model {model.version} unusable: {exc.message}",
                                           model_version=model.version)
            if not anat.in_domain:
                return CheckResult.skipped(f"outside the model's domain ({anat.reason})",
                                           model_version=model.version)
        out = self.predict(series, ctx, model)
        probs: dict[str, float] = out["probabilities"]
        pred: str = out["predicted"]
        p_sub = out["suboptimal"]
        thr = model.thresholds
        extra = {"predicted": pred, "probabilities": {k: round(v, 4) for k, v in probs.items()},
                 "expected": expected, "suboptimal": round(p_sub, 4), "model_version": out["model_version"]}
        seen = ""
        if anat is not None:
            extra.update(anat.details())
            seen = "; " + measured_text(anat.hu)
            outside = _outside_training_range(anat, model.metadata.get("classifier") or {})
            if outside:  # the graph clipped these into the range it was fit on: a reader should know
                extra["outside_training_range"] = outside
        conf_t = float(thr.get("mismatch_fail_confidence", 0.5))
        if expected is not None and pred != expected:
            score = 1.0 - probs[expected]
            msg = (f"{_NAMES[pred]} phase (P={probs[pred]:.2f}); protocol expects {_NAMES[expected]} "
                   f"(P={probs[expected]:.2f}){seen}")
            status = "fail" if probs[pred] >= conf_t else "warn"
            return CheckResult(status, msg, score, mismatch_action(expected, pred), extra)
        if expected is None and required == "required" and pred == "non_contrast":
            return CheckResult("fail", f"no contrast enhancement (P(non-contrast)={probs[pred]:.2f}); protocol "
                               f"requires contrast{seen}", probs[pred],
                               mismatch_action("portal_venous", "non_contrast"), extra)
        score = 1.0 - probs[expected] if expected else p_sub
        sub_t = float(thr.get("suboptimal_warn", 0.5))
        if pred != "non_contrast" and p_sub >= sub_t:
            return CheckResult("warn", f"{_NAMES[pred]} phase with suboptimal enhancement (P={p_sub:.2f}){seen}",
                               max(score, p_sub), ACTION_SUBOPTIMAL, extra)
        tail = ", as expected" if expected else ""
        return CheckResult("pass", f"{_NAMES[pred]} phase (P={probs[pred]:.2f}){tail}{seen}", score, None, extra)
