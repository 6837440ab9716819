"""Motion artefact (MR): calibrated probability of visible subject motion.

The model is trained on k-space motion simulation (Shaw et al. 2019, MIDL; rigid poses filling
k-space segments, as TorchIO ``RandomMotion``). ``score`` = P(any motion); ``fail`` when P(severe)
reaches the threshold chosen on validation data at 95 % specificity, ``warn`` when P(any) reaches
its own 95 %-specificity threshold.
"""

from __future__ import annotations

from typing import Any

from scanqc.checks.base import CheckContext
from scanqc.checks.ml import OUTSIDE, ModelCheck, infer_region
from scanqc.series import Series
from scanqc.verdict import CheckResult

ACTION_FAIL = ("Severe motion: make the patient comfortable, add head padding, explain the need to keep still, "
               "and repeat the series now")
ACTION_WARN = ("Possible motion artefact: review the images at the console and repeat the series if the "
               "anatomy of interest is blurred or ghosted")


class MotionCheck(ModelCheck):
    task = "motion"

    def evaluate(self, series: Series, ctx: CheckContext, model: Any) -> CheckResult:
        region, why = infer_region(series, ctx)
        if region != "brain":
            return CheckResult.skipped(f"{OUTSIDE} (motion model is trained on brain MR; this series is not brain: "
                                       f"{why})")
        out = self.predict(series, ctx, model)
        thr = model.thresholds
        p_any, p_sev = out["motion"], out["severe"]
        extra = {"probabilities": out["probabilities"], "severe": round(p_sev, 4),
                 "model_version": out["model_version"], "thresholds": thr}
        fail_t, warn_t = float(thr.get("severe_fail", 0.5)), float(thr.get("motion_warn", 0.5))
        if p_sev >= fail_t:
            return CheckResult("fail", f"severe motion artefact (P(severe)={p_sev:.2f} >= {fail_t:.2f})",
                               p_any, ACTION_FAIL, extra)
        if p_any >= warn_t:
            return CheckResult("warn", f"motion artefact likely (P={p_any:.2f} >= {warn_t:.2f})", p_any,
                               ACTION_WARN, extra)
        return CheckResult("pass", f"no relevant motion (P={p_any:.2f})", p_any, None, extra)
