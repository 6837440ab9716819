"""Acquisition parameters from the headers against the study's acquisition guideline.

Each deviation names the field, what the guideline expects, what the header says and what the
technologist can do now (reconstruct, repeat, resend).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from scanqc.checks.base import CheckContext
from scanqc.guideline import SeriesRule
from scanqc.series import Series
from scanqc.verdict import CheckResult

# Typical injection-to-scan delays per phase (seconds), used when the header records both the
# bolus start and the acquisition time. Bae KT, Radiology 2010;256:32-61 (docs/hu-reference.md).
PHASE_DELAY_S = {"arterial": (20, 50), "portal_venous": (55, 100), "delayed": (150, 900)}

_FMT = {"slice_thickness_mm": "{:g} mm", "pixel_spacing_mm": "{:g} mm", "fov_mm": "{:g} mm", "matrix": "{:g}",
        "kvp": "{:g} kVp", "tr_ms": "{:g} ms", "te_ms": "{:g} ms", "field_strength_t": "{:g} T"}


def _rng(field: str, lo: float, hi: float) -> str:
    f = _FMT[field]
    return f.format(lo) if lo == hi else f"{f.format(lo).split()[0]}-{f.format(hi)}"


def _default_action(field: str, lo: float, hi: float, modality: str | None) -> str:
    r = _rng(field, lo, hi)
    return {
        "slice_thickness_mm": f"Reconstruct at {r} slice thickness",
        "pixel_spacing_mm": f"Reconstruct with {r} pixel spacing (adjust FOV/matrix)",
        "fov_mm": f"Set the reconstruction field of view to {r} so the whole region fits",
        "matrix": f"Use an acquisition matrix of {r}",
        "kvp": f"Scan at {r} as the protocol requires; if the patient has left, record a protocol deviation",
        "tr_ms": f"Load the study sequence (TR {r}) and repeat the series",
        "te_ms": f"Load the study sequence (TE {r}) and repeat the series",
        "field_strength_t": f"Acquire on a {r} scanner as qualified for this study",
    }[field]


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        if isinstance(v, (list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, str)):
            v = next(iter(v))
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def measured(series: Series) -> dict[str, float | None]:
    """Acquisition parameters from the header, falling back on the volume geometry."""
    vol = series.volume
    try:  # a malformed value is "not measured", and never quoted (it could be patient data)
        ps = series.get("PixelSpacing")
        ps_vals = [float(x) for x in ps] if ps is not None and len(list(ps)) == 2 else None
    except (TypeError, ValueError, OverflowError):
        ps_vals = None
    if ps_vals is None and vol is not None:
        ps_vals = [vol.spacing[1], vol.spacing[2]]
    rows = _num(series.get("Rows")) or (vol.shape[1] if vol is not None else None)
    cols = _num(series.get("Columns")) or (vol.shape[2] if vol is not None else None)
    thickness = _num(series.get("SliceThickness"))
    if thickness is None and vol is not None:
        thickness = vol.spacing[0]
    fov = max(ps_vals[0] * rows, ps_vals[1] * cols) if ps_vals and rows and cols else None
    return {
        "slice_thickness_mm": thickness,
        "pixel_spacing_mm": max(ps_vals) if ps_vals else None,
        "fov_mm": fov,
        "matrix": min(rows, cols) if rows and cols else None,
        "kvp": _num(series.get("KVP")),
        "tr_ms": _num(series.get("RepetitionTime")),
        "te_ms": _num(series.get("EchoTime")) or _num(series.get("EffectiveEchoTime")),
        "field_strength_t": _num(series.get("MagneticFieldStrength")),
    }


def _time_s(t: Any) -> float | None:
    s = str(t or "").strip()
    if len(s) < 4:
        return None
    try:
        hh, mm = int(s[0:2]), int(s[2:4])
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def contrast_delay_s(series: Series) -> float | None:
    """Seconds from bolus start to acquisition, when the header records both."""
    start = _time_s(series.get("ContrastBolusStartTime"))
    acq = _time_s(series.get("AcquisitionTime") or series.get("SeriesTime"))
    if start is None or acq is None:
        return None
    delay = acq - start
    return delay + 86400 if delay < -43200 else delay


def deviations(series: Series, rule: SeriesRule, study_modality: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(field: str, expected: Any, actual: Any, action: str, severity: str = "fail") -> None:
        out.append({"field": field, "expected": expected, "actual": actual,
                    "action": rule.actions.get(field, action), "severity": severity})

    modality = series.modality
    want_modality = rule.modality or study_modality
    if want_modality and modality and modality.upper() != want_modality.upper():
        add("modality", want_modality, modality, f"Send the {want_modality} series for this study")
    if rule.body_part:
        bp = str(series.get("BodyPartExamined") or "").upper()
        if bp and bp not in rule.body_part:
            # Body part terms hold no digits; a value with some is more likely a misplaced identifier, and
            # header values that may be patient data are named, never quoted.
            shown = "(not a body part term)" if any(c.isdigit() for c in bp) else bp
            add("body_part", rule.body_part, shown, f"Confirm the scanned region ({'/'.join(rule.body_part)}) "
                "and correct BodyPartExamined", "warn")
    values = measured(series)
    for field, (lo, hi) in rule.ranges.items():
        v = values.get(field)
        if v is None:
            expected_in_header = {"CT": ("kvp",), "MR": ("tr_ms", "te_ms", "field_strength_t")}
            if field in expected_in_header.get(modality or "", ()):
                add(field, _rng(field, lo, hi), None, f"Export the series with its {field.split('_')[0].upper()} "
                    "header populated", "warn")
            continue
        tol = 1e-3 * max(abs(hi), 1.0)
        if not lo - tol <= v <= hi + tol:
            add(field, _rng(field, lo, hi), round(v, 3), _default_action(field, lo, hi, modality))
    agent = str(series.get("ContrastBolusAgent") or "").strip()
    if rule.contrast == "required" and not agent and series.source == "dicom":
        add("contrast", "contrast agent recorded (ContrastBolusAgent)", None,
            "Confirm contrast was injected; if not, repeat after injection per protocol", "warn")
    if rule.contrast == "none" and agent:
        add("contrast", "no contrast", "agent recorded", "Acquire the non-contrast series before injection; "
            "record a protocol deviation")
    if rule.expected_phase in PHASE_DELAY_S:
        delay = contrast_delay_s(series)
        lo, hi = PHASE_DELAY_S[rule.expected_phase]
        if delay is not None and not lo <= delay <= hi:
            add("contrast_delay_s", f"{lo}-{hi} s ({rule.expected_phase})", round(delay, 1),
                f"Start the {rule.expected_phase.replace('_', ' ')} acquisition {lo}-{hi} s after injection")
    return out


class ProtocolCheck:
    name = "protocol"

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        g = ctx.guideline
        if g is None:
            return CheckResult.skipped("no acquisition guideline given (--protocol)", measured=_clean(measured(series)))
        rule = ctx.rule
        if rule is None:
            desc = series.description or "(no SeriesDescription)"
            return CheckResult("warn", f"series {desc!r} matches no series of guideline {g.study}", None,
                               f"Check the series description; send only the series required by {g.study}",
                               {"guideline": g.study, "series_rule": None, "measured": _clean(measured(series))})
        devs = deviations(series, rule, g.modality)
        extra = {"guideline": g.study, "series_rule": rule.id, "deviations": devs, "measured": _clean(measured(series))}
        if not devs:
            return CheckResult("pass", f"matches {g.study} / {rule.id}", extra=extra)
        worst = "fail" if any(d["severity"] == "fail" for d in devs) else "warn"
        lead = next(d for d in devs if d["severity"] == worst)
        msg = "; ".join(f"{d['field']} {d['actual']} (expected {d['expected']})" for d in devs)
        return CheckResult(worst, msg, None, lead["action"], extra)


def _clean(d: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def acquisition_date(series: Series) -> dt.date | None:
    for kw in ("AcquisitionDate", "SeriesDate", "StudyDate", "ContentDate"):
        s = str(series.get(kw) or "").strip()
        if len(s) >= 8:
            try:
                return dt.datetime.strptime(s[:8], "%Y%m%d").date()
            except ValueError:
                continue
    return None


class VisitWindowCheck:
    """Acquisition date within +/- window of the scheduled visit (day N after baseline)."""

    name = "visit_window"

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        g = ctx.guideline
        if g is None or not g.visits:
            return CheckResult.skipped("no visit schedule in the guideline")
        name = ctx.visit or series.get("ClinicalTrialTimePointID")
        visit = g.visit(str(name) if name else None)
        if visit is None:
            known = [v.name for v in g.visits]
            if not name:
                return CheckResult.skipped(f"visit unknown: pass --visit or set ClinicalTrialTimePointID ({known})")
            return CheckResult("warn", f"visit {name!r} is not in the {g.study} schedule {known}", None,
                               "Label the series with a scheduled visit (ClinicalTrialTimePointID)")
        acq = acquisition_date(series)
        if acq is None:
            return CheckResult("warn", "no acquisition date in the header", None,
                               "Export the series with AcquisitionDate/StudyDate populated")
        base = g.baseline
        if base is not None and visit.name == base.name:
            return CheckResult("pass", f"{visit.name} (baseline) acquired {acq.isoformat()}",
                               extra={"visit": visit.name, "acquired": acq.isoformat()})
        if ctx.baseline_date is None:
            return CheckResult.skipped(f"baseline date unknown for visit {visit.name} (pass --baseline-date)")
        target = ctx.baseline_date + dt.timedelta(days=visit.day - (base.day if base else 0))
        lo = target - dt.timedelta(days=visit.window_days)
        hi = target + dt.timedelta(days=visit.window_days)
        extra = {"visit": visit.name, "acquired": acq.isoformat(), "window": [lo.isoformat(), hi.isoformat()],
                 "days_off": (acq - target).days}
        if lo <= acq <= hi:
            return CheckResult("pass", f"{visit.name} acquired {acq.isoformat()}, within {lo}..{hi}", extra=extra)
        return CheckResult("fail", f"{visit.name} acquired {acq.isoformat()}, outside window {lo}..{hi} "
                                   f"({(acq - target).days:+d} days)", None,
                           f"Record a visit-window deviation; schedule {visit.name} within {lo}..{hi}", extra)
