"""Abdominal CT coverage by geometry: are the liver dome and the lower kidney poles inside the scan?

From :func:`scanqc.checks.abdomen_anatomy.locate` (the segmentation network's localisation when installed):
the liver dome must lie below the first (superior) slice and the lower poles of the kidneys above the last
(inferior) slice. An end cuts an organ when that end slice itself (the detail grid's, ~3-5 mm of native slices)
holds a section of organ-like tissue where the segmentation puts the organ (``END_TISSUE_MM2``: kidneys 2 cm^2,
liver 15 cm^2 or 20 % of its largest section); a smaller section (1-2 cm^2, 3-15 cm^2) warns that the end is
not verified. The end that cuts fails, and the check reports the distance in mm between the anatomy and each
end and the tissue measured in the end slices, so a full scan whose kidneys end 10 mm above the last slice
passes and says so. Inputs the localisation cannot place (no liver or kidneys in view: a chest-only, pelvis-only
or non-abdominal CT) are skipped as outside the domain.
"""

from __future__ import annotations

import os

from scanqc.checks.abdomen_anatomy import END_TISSUE_MM2, Anatomy, locate
from scanqc.checks.base import CheckContext
from scanqc.series import Series
from scanqc.verdict import CheckResult

REGION = "liver_dome_to_kidneys"
# On by default since session 8: on the blind cross-simulator's 60 abdominal CTs it is right on 0.833 [0.75, 0.92]
# against the coverage CNN's 0.667 (paired +0.167 [+0.05, +0.28]); on its generator's held-out draws 0.975
# (docs/model-quality.md). SCANQC_ABDOMINAL_COVERAGE=cnn puts the CNN (coverage 2.x's CT delegate) back.
ENABLED = os.environ.get("SCANQC_ABDOMINAL_COVERAGE", "anatomy").strip().lower() != "cnn"
LANDMARK = {"superior": "the liver dome", "inferior": "the lower poles of the kidneys"}


def _action(missing: list[str]) -> str:
    ends = " and ".join(f"{e}ly to include {LANDMARK[e]}" for e in missing)
    return f"Extend the scan range {ends}, then repeat the series before the patient leaves"


def _mm(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f} mm"


def _near(v: float | None, cut: bool, end_mm2: float | None, anat: Anatomy) -> str:
    """The distance to an end; 0 on the working grid with no organ in the end slice itself is "within a working
    slice" (the organ ends between the two), not 0 mm."""
    if v is not None and v <= 0.0 and not cut and end_mm2 is not None:
        return f"< {anat.extra.get('working_slice_mm', 6.0):.0f} mm"
    return _mm(v)


def _section(mm2: float | None, frac: float | None, whose: str) -> str:
    parts = ([f"{mm2 / 100:.1f} cm^2"] if mm2 is not None else []) + (
        [f"{100 * frac:.0f} % of {whose} largest section"] if frac is not None else [])
    return f" ({', '.join(parts)})" if parts else ""


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
    fracs = anat.extra.get("end_slice_area_fraction", {})
    liver_mm2, kidney_mm2 = anat.liver_in_first_slice_mm2, anat.kidneys_in_last_slice_mm2
    if not anat.found.get("liver"):
        # Kidneys but no liver: the scan starts below the liver (or the liver was not found).
        missing.append("superior")
        why["superior"] = "no liver in the scan"
    elif anat.liver_cut_superior:
        missing.append("superior")
        why["superior"] = "liver already in the first slice" + _section(liver_mm2, fracs.get("liver_in_first_slice"),
                                                                        "its")
    if anat.kidneys_cut_inferior:  # also with only the top of the kidneys in view (too little to be "found")
        missing.append("inferior")
        why["inferior"] = "kidney tissue in the last slice" + _section(kidney_mm2, fracs.get("kidneys_in_last_slice"),
                                                                       "their")
    elif not anat.found.get("kidneys"):
        uncertain.append("inferior")
        why["inferior"] = "kidneys not located"
    details["missing"] = missing
    dome, kid = anat.dome_to_first_slice_mm, anat.kidneys_to_last_slice_mm
    # An organ that reaches the end slice with too small a section to count as cut ends within about a slice of
    # the scan's end: not shown to be covered, so say so rather than pass. Where the end slice itself was
    # measured, that says whether it holds organ tissue; else the working-grid profile reaching the end does.
    for end, organ, mm2, dist, word in (("superior", "liver", liver_mm2, dome, "first"),
                                        ("inferior", "kidney", kidney_mm2, kid, "last")):
        if end in missing or end in uncertain or dist is None:
            continue
        if mm2 is not None and mm2 >= END_TISSUE_MM2[organ][0]:
            uncertain.append(end)
            why[end] = f"{mm2 / 100:.1f} cm^2 of {organ}-like tissue in the {word} slice"
        elif mm2 is None and dist <= 0.0:
            uncertain.append(end)
            why[end] = f"{organ} tissue reaches the {word} slice"
    where = (f"liver dome {_near(dome, 'superior' in missing, liver_mm2, anat)} below the first slice, kidneys end "
             f"{_near(kid, 'inferior' in missing, kidney_mm2, anat)} above the last slice")
    if missing:
        cut = "; ".join(f"{LANDMARK[e]} cut at the {e} end ({why[e]})" for e in missing)
        return CheckResult("fail", f"liver dome to kidneys not fully covered: {cut}", 1.0, _action(missing),
                           details)
    if uncertain:
        details["uncertain"] = uncertain
        ends = "; ".join(f"{e} end not verified ({why[e]})" for e in uncertain)
        slices = " and ".join({"superior": "first", "inferior": "last"}[e] for e in uncertain)
        return CheckResult("warn", f"liver dome to kidneys: {ends} ({where})", 0.5,
                           f"Review the {slices} slices; " + _action(uncertain)[0].lower() + _action(uncertain)[1:]
                           + f" if {' or '.join(LANDMARK[e] for e in uncertain)} are cut", details)
    return CheckResult("pass", f"liver dome to kidneys fully covered ({where})", 0.0, None, details)
