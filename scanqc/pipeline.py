"""The one path: read -> canonical volume -> checks -> verdict.

The CLI, the HTTP service and the DICOM receiver all call :func:`check_paths` (files on disk) or
:func:`check_series` (an already assembled series); nothing else produces verdicts.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scanqc.cancel import CancelToken, CheckCancelled, cancel_scope, checkpoint, current_token
from scanqc.checks.base import Check, CheckContext, InferFn
from scanqc.checks.deidentification import DeidentificationCheck
from scanqc.checks.integrity import IntegrityCheck
from scanqc.checks.ml import ModelCheck, inplane_targets, model_checks
from scanqc.checks.phantom import PHANTOM_CHECK_NAMES, PhantomCheck, ScannerQualificationCheck, phantom_route
from scanqc.checks.protocol import ProtocolCheck, VisitWindowCheck
from scanqc.errors import ErrorCode, ScanQCError, exc_summary
from scanqc.guideline import Guideline
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.series import Series, load_series
from scanqc.verdict import CheckResult, Verdict, overall_status

log = logging.getLogger("scanqc")

HEADER_CHECKS: list[Check] = [IntegrityCheck(), ProtocolCheck(), DeidentificationCheck(), VisitWindowCheck()]
MODEL_CHECKS: list[Check] = [*model_checks()]
# Phantom QC: the phantom check runs only on phantom series, scanner_qualification only on patient series of
# studies that require qualified scanners (each says so through ``applies``).
PHANTOM_CHECKS: list[Check] = [PhantomCheck(), ScannerQualificationCheck()]


def default_checks() -> list[Check]:
    return [*HEADER_CHECKS, *PHANTOM_CHECKS, *MODEL_CHECKS]


def check_series(series: Series, guideline: Guideline | None = None, *, visit: str | None = None,
                 baseline_date: dt.date | None = None, models: object = None, infer: InferFn | None = None,
                 checks: Sequence[Check] | None = None, started: float | None = None, station: str | None = None,
                 scanners: object = None) -> Verdict:
    """Run every check on one assembled series and return its verdict.

    Args:
        station: the calling AE title / station, when known (phantom routing, scanner identity).
        scanners: a :class:`scanqc.checks.phantom.ScannerRegistry` (the service's store): phantom drift
            rules and the patient series' ``scanner_qualification`` need it; offline it is None.

    A phantom series (:func:`scanqc.checks.phantom.phantom_route`) gets only the checks named in
    ``PHANTOM_CHECK_NAMES`` and a verdict of ``kind`` "phantom".
    """
    t0 = started if started is not None else time.perf_counter()
    base = dict(study_uid=series.study_uid, series_description=series.description,
                series_number=series.series_number, n_instances=series.n_instances,
                notes=list(series.notes), timings_ms=dict(series.timings_ms))
    if series.error is not None:
        return Verdict.from_error(series.input, series.error.code.value, series.error.message,
                                  (time.perf_counter() - t0) * 1000, series_uid=series.series_uid,
                                  modality=series.modality, **base)
    phantom = phantom_route(series, guideline, station)
    rule = guideline.rule_for(series.modality, series.description) if guideline and not phantom else None
    ctx = CheckContext(guideline=guideline, rule=rule, visit=visit, baseline_date=baseline_date,
                       models=models, infer=infer, station=station, scanners=scanners, phantom=phantom)
    ctx.cache.update(series.scratch)  # e.g. the in-plane resampling the receiver did per slice
    results: dict[str, CheckResult] = {}
    timings = base["timings_ms"]
    selected: list[Check] = []
    for check in checks if checks is not None else default_checks():
        checkpoint()
        if phantom and check.name not in PHANTOM_CHECK_NAMES:
            continue  # no patient checks (motion, coverage, protocol...) on a phantom
        applies = getattr(check, "applies", None)
        if applies is not None and not applies(series, ctx):
            continue
        selected.append(check)
        results[check.name] = CheckResult.skipped("not run")  # placeholder: keeps the verdict's check order
    # The model checks (preprocessing + inference: numpy and onnxruntime release the GIL) run in worker threads,
    # all at once, so a CT's contrast phase and coverage do not wait for each other, and the header checks
    # (de-identification reads every instance's header: tens of ms on a CT) run meanwhile in this thread.
    concurrent = [c for c in selected if isinstance(c, ModelCheck)]
    if not concurrent or len(selected) < 2:
        for check in selected:
            checkpoint()
            results[check.name], timings[check.name] = _run_check(check, series, ctx)
    else:
        token = current_token()
        with ThreadPoolExecutor(max_workers=len(concurrent), thread_name_prefix="scanqc-check") as pool:
            futures = {c.name: pool.submit(_run_in_scope, token, c, series, ctx) for c in concurrent}
            for check in selected:
                if check.name not in futures:
                    checkpoint()
                    results[check.name], timings[check.name] = _run_check(check, series, ctx)
            for name, fut in futures.items():
                results[name], timings[name] = fut.result()
    vol = series.volume
    return Verdict(input=series.input, series_uid=series.series_uid, modality=series.modality,
                   status=overall_status(results), checks=results, elapsed_ms=(time.perf_counter() - t0) * 1000,
                   shape=vol.shape if vol is not None else None, spacing_mm=vol.spacing if vol is not None else None,
                   **{k: v for k, v in base.items() if k != "timings_ms"}, timings_ms=timings,
                   kind="phantom" if phantom else "patient")


def _run_check(check: Check, series: Series, ctx: CheckContext) -> tuple[CheckResult, float]:
    """One check's result and its wall time (ms); a failing check is skipped, never the verdict lost."""
    t = time.perf_counter()
    try:
        result = check(series, ctx)
    except CheckCancelled:
        raise
    except ScanQCError as exc:
        result = CheckResult.skipped(f"could not run: {exc.code.value}: {exc.message}")
    except Exception as exc:  # a bug in one check must not cost the others their verdict
        _log_crash(f"check {check.name} crashed", exc)
        result = CheckResult.skipped(f"internal error in {check.name}: {type(exc).__name__}")
    return result, (time.perf_counter() - t) * 1000


def _run_in_scope(token: CancelToken | None, check: Check, series: Series,
                  ctx: CheckContext) -> tuple[CheckResult, float]:
    """:func:`_run_check` in a worker thread, under the caller's cancellation token (it is per thread)."""
    with cancel_scope(token):
        checkpoint()
        return _run_check(check, series, ctx)


def check_path(path: str | Path, guideline: Guideline | None = None, *, limits: Limits = DEFAULT_LIMITS,
               modality_hint: str | None = None, **kw) -> list[Verdict]:
    """All series behind one input path (file, folder, zip, NIfTI); a coded error verdict on failure."""
    t0 = time.perf_counter()
    try:
        series, _ = load_series(path, limits, modality_hint, inplane=_inplane(kw.get("models")))
    except ScanQCError as exc:
        return [Verdict.from_error(str(path), exc.code.value, exc.message, (time.perf_counter() - t0) * 1000)]
    except (MemoryError, RecursionError) as exc:
        return [Verdict.from_error(str(path), ErrorCode.TOO_LARGE.value, f"{path}: {type(exc).__name__}",
                                   (time.perf_counter() - t0) * 1000)]
    except Exception as exc:
        _log_crash(f"reading {path} failed", exc)
        return [Verdict.from_error(str(path), ErrorCode.INTERNAL.value,
                                   f"{path}: unexpected {type(exc).__name__} while reading (please report)",
                                   (time.perf_counter() - t0) * 1000)]
    read_share = (time.perf_counter() - t0) / max(len(series), 1)
    out = []
    try:
        for s in series:
            # Each verdict's elapsed time includes its share of reading the input.
            out.append(check_series(s, guideline, started=time.perf_counter() - read_share, **kw))
    except CheckCancelled as exc:  # the series not yet checked get one error verdict together
        out.append(Verdict.from_error(str(path), exc.code.value, exc.message, (time.perf_counter() - t0) * 1000))
    return out


def _inplane(models: object) -> dict | None:
    """The installed models' in-plane passes, made per slice while reading (as the receiver does); None (the checks
    then make them on the volume) if the models cannot say: reading must not fail for a broken model folder."""
    try:
        return inplane_targets(models)
    except Exception as exc:
        _log_crash("listing the models' in-plane grids failed", exc)
        return None


def _log_crash(what: str, exc: BaseException) -> None:
    """A bug report for the log: the stack and the exception with quoted values masked (they can be header
    values, i.e. patient data), never the raw exception text."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s: %s\n%s", what, exc_summary(exc), stack)


def check_paths(paths: Iterable[str | Path], guideline: Guideline | None = None, **kw) -> Iterator[Verdict]:
    """Verdicts for every series of every path, in input order."""
    for p in paths:
        yield from check_path(p, guideline, **kw)


def apply_required_series(verdicts: list[Verdict], guideline: Guideline | None, visit: str | None = None,
                          series_by_uid: dict[str, Series] | None = None) -> None:
    """Study-level check: every series the visit requires arrived. Adds ``required_series`` in place."""
    if guideline is None or not guideline.visits:
        return
    by_study: dict[str | None, list[Verdict]] = {}
    for v in verdicts:
        if v.status != "error" and v.kind == "patient":  # a phantom is no visit series
            by_study.setdefault(v.study_uid, []).append(v)
    for study_verdicts in by_study.values():
        names = {visit} if visit else set()
        if not names and series_by_uid:
            for v in study_verdicts:
                s = series_by_uid.get(v.series_uid or "")
                tp = s.get("ClinicalTrialTimePointID") if s else None
                if tp:
                    names.add(str(tp))
        vis = guideline.visit(next(iter(names))) if len(names) == 1 else None
        if vis is None:
            result = CheckResult.skipped("visit unknown; cannot list required series")
        else:
            have = {v.checks["protocol"].extra.get("series_rule") for v in study_verdicts if "protocol" in v.checks}
            missing = [r for r in vis.required_series if r not in have]
            extra = {"visit": vis.name, "required": vis.required_series, "missing_series": missing}
            if missing:
                labels = {r.id: r.label or r.id for r in guideline.series}
                result = CheckResult("fail", f"visit {vis.name} requires {len(vis.required_series)} series; missing: "
                                             f"{', '.join(labels[m] for m in missing)}", None,
                                     f"Acquire and send {', '.join(labels[m] for m in missing)} before the "
                                     "patient leaves", extra)
            else:
                result = CheckResult("pass", f"all {len(vis.required_series)} required series received", extra=extra)
        for v in study_verdicts:
            v.checks["required_series"] = result
            v.status = overall_status(v.checks)
