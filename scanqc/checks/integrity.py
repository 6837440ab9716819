"""Series integrity: missing slices, duplicates, mixed stacks, irregular spacing (from assembly)."""

from __future__ import annotations

from scanqc.checks.base import CheckContext
from scanqc.series import Series
from scanqc.verdict import CheckResult

_ACTIONS = {
    "gap": ("Resend the complete series from the scanner; if slices were never reconstructed, "
            "reconstruct the full range"),
    "undecodable": "Resend the series; some instances arrived corrupted",
    "duplicate": "Check the export: send one reconstruction per series",
    "mixed_orientation": "Send localizers and the diagnostic acquisition as separate series",
    "mixed_size": "Send each reconstruction as its own series",
    "irregular_spacing": "Reconstruct with constant slice increment",
    "no_geometry": "Export with full image geometry (ImagePositionPatient/ImageOrientationPatient)",
}


class IntegrityCheck:
    name = "integrity"

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        issues = [i for i in series.integrity if i.severity in ("warn", "fail")]
        info = [i.to_dict() for i in series.integrity]
        if not issues:
            n = series.volume.shape[0] if series.volume is not None else 0
            return CheckResult("pass", f"{n} slice(s), regular geometry", extra={"issues": info})
        worst = "fail" if any(i.severity == "fail" for i in issues) else "warn"
        lead = next(i for i in issues if i.severity == worst)
        return CheckResult(worst, "; ".join(i.message for i in issues), None,
                           _ACTIONS.get(lead.kind, "Resend the series"), {"issues": info})
