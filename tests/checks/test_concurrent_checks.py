"""The model checks of one series run at once (scanqc.pipeline): same verdict, shared work done once, and a
cancelled check still stops inside the worker threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scanqc.cache import SeriesCache, cached
from scanqc.cancel import CancelToken, CheckCancelled, cancel_scope, checkpoint
from scanqc.checks.base import CheckContext
from scanqc.checks.ml import ModelCheck
from scanqc.pipeline import HEADER_CHECKS, check_series
from scanqc.series import Series
from scanqc.verdict import CheckResult
from scanqc.volume import Volume


def _series() -> Series:
    vol = Volume(np.zeros((8, 16, 16), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), modality="CT")
    return Series(input="x", series_uid="1.2.3", modality="CT", volume=vol, source="dicom", n_instances=8)


class _Meeting(ModelCheck):
    """A model check that only passes if the other one is running at the same time (a barrier of two)."""

    def __init__(self, task: str, barrier: threading.Barrier, before=None, after=None) -> None:
        super().__init__(task)
        self.barrier, self.before, self.after = barrier, before, after

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        if self.before:
            self.before()
        self.barrier.wait()  # BrokenBarrierError (-> "internal error") when run one after the other
        if self.after:
            self.after()
        shared = cached(ctx.cache, "shared", lambda: object())
        return CheckResult("pass", f"{self.task} saw {id(shared)}")


def test_model_checks_run_concurrently_in_registry_order_and_share_the_cache() -> None:
    barrier = threading.Barrier(2, timeout=10)
    checks = [*HEADER_CHECKS, _Meeting("motion", barrier), _Meeting("coverage", barrier)]
    v = check_series(_series(), checks=checks)
    assert list(v.checks)[-2:] == ["motion", "coverage"]  # order of the registry, not of completion
    assert [v.checks[n].status for n in ("motion", "coverage")] == ["pass", "pass"], v.checks
    # One shared object built once for both, though they asked at the same moment.
    assert v.checks["motion"].message.split()[-1] == v.checks["coverage"].message.split()[-1]
    assert {"motion", "coverage"} <= set(v.timings_ms)


def test_cancelling_a_check_stops_the_concurrent_model_checks() -> None:
    token = CancelToken()
    barrier = threading.Barrier(2, timeout=10)
    checks = [_Meeting("motion", barrier, before=token.cancel), _Meeting("coverage", barrier, after=checkpoint)]
    with cancel_scope(token), pytest.raises(CheckCancelled):
        check_series(_series(), checks=checks)


def test_series_cache_builds_each_key_once_across_threads() -> None:
    cache = SeriesCache()
    calls: list[int] = []
    start = threading.Barrier(8, timeout=10)

    def build() -> int:
        calls.append(1)
        threading.Event().wait(0.05)  # long enough for every thread to ask while it is being built
        return 42

    def ask(out: list[int]) -> None:
        start.wait()
        out.append(cached(cache, ("k", 1), build))

    got: list[int] = []
    threads = [threading.Thread(target=ask, args=(got,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == [42] * 8 and len(calls) == 1
    plain: dict = {}
    assert cached(plain, "a", lambda: 1) == 1 and cached(plain, "a", lambda: 2) == 1
    assert cached(None, "a", lambda: 3) == 3
