"""Abdominal CT coverage by geometry: are the liver dome and the lower kidney poles inside the scan?

From :func:`scanqc.checks.abdomen_anatomy.locate` (the segmentation network's localisation when installed):
the liver dome must lie below the first (superior) slice and the lower poles of the kidneys above the last
(inferior) slice. An end cuts an organ when the organ's section in that end's 6 mm working slice is already a
sizeable part of its largest section (``CUT_FRACTION``); the end that cuts fails, and the check reports the
distance in mm between the anatomy and each end, so a full scan whose kidneys end 10 mm above the last slice
passes and says so. Inputs the localisation cannot place (no liver or kidneys in view: a chest-only, pelvis-only
or non-abdominal CT) are skipped as outside the domain.
"""

from __future__ import annotations

import os

from scanqc.checks.abdomen_anatomy import locate
from scanqc.checks.base import CheckContext
from scanqc.series import Series
from scanqc.verdict import CheckResult

REGION = "liver_dome_to_kidneys"
# Off by default (the lead decides): by the segmentation (abdomen_seg 1.0.0) it scores 0.975 [0.94, 1.00] on its
# generator's held-out draws (seed 2000 test, n=120; 2.0.0's rules: 0.64), docs/model-quality.md. Set
# SCANQC_ABDOMINAL_COVERAGE=anatomy (or ENABLED = True) to use it instead of the coverage CNN on abdominal CT.
ENABLED = os.environ.get("SCANQC_ABDOMINAL_COVERAGE", "") == "anatomy"
LANDMARK = {"superior": "the liver dome", "inferior": "the lower poles of the kidneys"}


def _action(missing: list[str]) -> str:
    ends = " and ".join(f"{e}ly to include {LANDMARK[e]}" for e in missing)
    return f"Extend the scan range {ends}, then repeat the series before the patient leaves"


def _mm(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f} mm"


def abdominal_coverage(series: Series, ctx: CheckContext) -> CheckResult:
    """The coverage verdict for an abdominal CT (``liver_dome_to_kidneys``)."""
    assert series.volume is not None
    anat = locate(series.volume, ctx.cache)
    if not anat.in_domain:
        return CheckResult.skipped(f"outside the model's domain ({anat.reason})", region=REGION,
                                   method="anatomy")
    details = {"region": REGION, "method": "anatomy", **anat.details()}
    missing: list[str] = []
    uncertain: list[str] = []
    why: dict[str, str] = {}
    if not anat.found.get("liver"):
        # Kidneys but no liver: the scan starts below the liver (or the liver was not found).
        missing.append("superior")
        why["superior"] = "no liver in the scan"
    elif anat.liver_cut_superior:
        missing.append("superior")
        frac = anat.extra.get("end_slice_area_fraction", {}).get("liver_in_first_slice")
        why["superior"] = "liver already in the first slice" + (
            f" ({100 * frac:.0f} % of its largest section)" if frac is not None else "")
    if anat.kidneys_cut_inferior:  # also with only the top of the kidneys in view (too little to be "found")
        missing.append("inferior")
        frac = anat.extra.get("end_slice_area_fraction", {}).get("kidneys_in_last_slice")
        why["inferior"] = "kidney tissue in the last slice" + (
            f" ({100 * frac:.0f} % of their largest section)" if frac is not None else "")
    elif not anat.found.get("kidneys"):
        uncertain.append("inferior")
        why["inferior"] = "kidneys not located"
    details["missing"] = missing
    dome, kid = anat.dome_to_first_slice_mm, anat.kidneys_to_last_slice_mm
    where = f"liver dome {_mm(dome)} below the first slice, kidneys end {_mm(kid)} above the last slice"
    if missing:
        cut = "; ".join(f"{LANDMARK[e]} cut at the {e} end ({why[e]})" for e in missing)
        return CheckResult("fail", f"liver dome to kidneys not fully covered: {cut}", 1.0, _action(missing),
                           details)
    if uncertain:
        details["uncertain"] = uncertain
        return CheckResult("warn", f"liver dome covered ({_mm(dome)} below the first slice); kidneys not located, "
                           "inferior end not verified", 0.5,
                           "Review the last slices; " + _action(uncertain)[0].lower() + _action(uncertain)[1:]
                           + " if the kidneys are cut", details)
    return CheckResult("pass", f"liver dome to kidneys fully covered ({where})", 0.0, None, details)
