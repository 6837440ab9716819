"""SeriesTracker without a network: arrivals during a check, every instance in exactly one final verdict."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from scanqc.ingest.completion import CompletionPolicy
from scanqc.ingest.tracker import SeriesArrival, SeriesTracker
from scanqc.io.dicom_write import volume_to_datasets
from scanqc.volume import Volume


def _datasets(n: int) -> list[Dataset]:
    vol = Volume(np.random.default_rng(0).normal(0, 1, (n, 16, 16)).astype(np.float32), (2.0, 1.0, 1.0))
    out = []
    for d in volume_to_datasets(vol, "CT"):
        buf = io.BytesIO()
        d.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        out.append(pydicom.dcmread(buf))
    return out


def _add(tr: SeriesTracker, ds: Dataset, assoc: int = 1) -> None:
    tr.add(("site", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), str(ds.SOPInstanceUID), ds, None,
           station="CT1", assoc=assoc)


@pytest.mark.timeout(30)  # the bug this pins was a deadlock
def test_instance_arriving_during_a_provisional_check_reopens_without_deadlock() -> None:
    dss = _datasets(6)
    calls: list[SeriesArrival] = []
    done = threading.Event()

    def on_check(folder: Path, a: SeriesArrival) -> list[int]:
        calls.append(a)
        if len(calls) == 1:
            _add(tr, dss[5], assoc=2)  # the last slice lands while the first (provisional) check runs
            assert not a.is_current()
            return []  # like Processor.process_series: an overtaken provisional verdict is not stored
        if a.final:
            done.set()
        return [len(calls)]

    def on_finalize(folder: Path, a: SeriesArrival) -> None:
        calls.append(a)
        done.set()

    tr = SeriesTracker(CompletionPolicy(quiet_period_s=0.6, min_quiet_s=0.05), on_check,
                       on_finalize=on_finalize).start()
    try:
        for d in dss[:5]:
            _add(tr, d)
        tr.released(1)
        assert done.wait(10), f"no final verdict ({[(c.completed_by, c.final, c.n_instances) for c in calls]})"
        time.sleep(0.8)  # nothing else may follow
    finally:
        tr.stop()
    assert calls[0].n_instances == 5 and not calls[0].final
    checked = [c for c in calls if c.series is not None]
    assert checked[-1].n_instances == 6 and checked[-1].series.volume.shape[0] == 6  # type: ignore[union-attr]
    # Exactly one final word on the series, covering all six instances: a final check, or the confirmation
    # of the provisional verdict that covered them.
    finals = [c for c in calls if c.final]
    assert len(finals) == 1 and finals[0].n_instances == 6 and tr.pending_keys() == []
    if finals[0].series is None:
        assert finals[0].replaces == (len(checked),)


def test_callback_failure_is_retried_and_the_series_kept() -> None:
    dss = _datasets(3)
    attempts: list[Any] = []

    def on_check(folder: Path, a: SeriesArrival) -> list[int]:
        attempts.append(a)
        if len(attempts) == 1:
            raise RuntimeError("database locked")
        return [7]

    tr = SeriesTracker(CompletionPolicy(quiet_period_s=0.3, adaptive=False), on_check, retry_delay_s=0.1).start()
    try:
        for d in dss:
            _add(tr, d)
        deadline = time.monotonic() + 10
        while tr.completed == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        tr.stop()
    assert len(attempts) == 2 and tr.completed == 1 and attempts[1].n_instances == 3
