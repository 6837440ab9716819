"""What every check shares: the context it runs in and the registry the pipeline walks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from scanqc.cache import SeriesCache
from scanqc.guideline import Guideline, SeriesRule
from scanqc.series import Series
from scanqc.verdict import CheckResult

# (task, batch of preprocessed inputs) -> model outputs. Lets the service swap local onnxruntime
# calls for an adaptively batched runner without touching the checks.
InferFn = Callable[[str, np.ndarray], np.ndarray]


@dataclass
class CheckContext:
    guideline: Guideline | None = None
    rule: SeriesRule | None = None  # the guideline series this one was matched to
    visit: str | None = None  # visit name (else the ClinicalTrialTimePointID header)
    baseline_date: dt.date | None = None  # subject's baseline acquisition date, for visit windows
    models: Any = None  # scanqc.models registry of loaded models; None = load the installed defaults
    infer: InferFn | None = None
    cache: dict[str, Any] = field(default_factory=SeriesCache)  # per-series scratch (preprocessed arrays...)
    station: str | None = None  # calling AE title / station the series came from, when known
    scanners: Any = None  # scanqc.checks.phantom.ScannerRegistry (the service's store); None offline
    phantom: str | None = None  # why the series is a phantom (scanqc.checks.phantom.phantom_route), else None


class Check(Protocol):
    """A check; it may also define ``applies(series, ctx) -> bool`` to leave series it does not concern out
    of the verdict (the phantom checks do)."""

    name: str

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult: ...
