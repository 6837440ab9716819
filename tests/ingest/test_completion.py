"""Completion signals: each one fires on its own evidence, and says whether it is final."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from scanqc.ingest.assembler import SeriesAssembler, StackState
from scanqc.ingest.completion import CompletionPolicy, Progress, decide, expected_frames
from scanqc.io.dicom_write import volume_to_datasets
from scanqc.volume import Volume

POLICY = CompletionPolicy(quiet_period_s=5.0, min_quiet_s=0.2, gap_factor=10.0)
REGULAR = StackState(10, [float(i) for i in range(10)], 1.0, 0, 0, True)
GAPPED = StackState(9, [0.0, 1.0, 2.0, 5.0, 6.0], 1.0, 2, 0, False)
LAN = deque([0.005] * 20)  # a LAN sender: 5 ms between instances


def _progress(**kw) -> Progress:
    base = dict(last_mono=100.0, n_frames=10, stack=REGULAR, gaps=deque(LAN))
    base.update(kw)
    return Progress(**base)


def test_final_signals() -> None:
    assert decide(_progress(mpps_final=True), 100.0, POLICY).signal == "mpps"
    waiting = _progress(mpps_final=True, mpps_sops={"1", "2"}, sops={"1"})
    assert decide(waiting, 100.0, POLICY) is None  # MPPS listed an image that has not arrived
    d = decide(_progress(expected_frames=10), 100.0, POLICY)
    assert d is not None and (d.signal, d.final) == ("expected_count", True)
    assert decide(_progress(expected_frames=11), 100.01, POLICY) is None
    d = decide(_progress(stack=GAPPED), 105.0, POLICY)
    assert d is not None and (d.signal, d.final) == ("quiet_period", True)
    assert decide(_progress(recovered=True), 104.9, POLICY) is None  # a restart waits the full period
    assert decide(_progress(recovered=True), 105.0, POLICY).signal == "restart"


def test_provisional_signals() -> None:
    d = decide(_progress(released=True, release_count=10), 100.0, POLICY)
    assert d is not None and (d.signal, d.final) == ("association_release", False)
    # One instance per association (a per-instance forwarder) is no evidence.
    assert decide(_progress(released=True, release_count=1), 100.0, POLICY) is None
    # Adaptive quiet: 10 x 5 ms is under the 0.2 s floor -> 0.2 s.
    assert decide(_progress(), 100.19, POLICY) is None
    d = decide(_progress(), 100.21, POLICY)
    assert d is not None and (d.signal, d.final) == ("geometry", False)
    # A stack with a gap waits three adaptive periods: the missing slices may be on their way.
    assert decide(_progress(stack=GAPPED), 100.5, POLICY) is None
    assert decide(_progress(stack=GAPPED), 100.61, POLICY).signal == "adaptive_quiet"


def test_adaptive_quiet_follows_the_sender_and_is_bounded() -> None:
    assert POLICY.adaptive_quiet_s([0.005] * 10) == 0.2
    assert POLICY.adaptive_quiet_s([0.08] * 10) == 0.8  # a slow WAN sender
    assert POLICY.adaptive_quiet_s([2.0] * 10) == 5.0  # never beyond the configured quiet period
    assert POLICY.adaptive_quiet_s([]) == 0.5  # unknown pace: default gap 50 ms
    slow = _progress(gaps=deque([0.08] * 10))
    assert decide(slow, 100.5, POLICY) is None and decide(slow, 100.81, POLICY).signal == "geometry"


def test_adaptive_off_keeps_only_final_signals() -> None:
    off = CompletionPolicy(quiet_period_s=5.0, adaptive=False)
    assert decide(_progress(released=True, release_count=10), 104.0, off) is None
    assert decide(_progress(), 105.0, off).signal == "quiet_period"


def _asm(dss: list[Dataset]) -> SeriesAssembler:
    asm = SeriesAssembler("x")
    for d in dss:
        buf = io.BytesIO()
        d.save_as(buf, enforce_file_format=True)
        buf.seek(0)
        asm.add(pydicom.dcmread(buf))
    return asm


def test_expected_count_from_headers() -> None:
    vol = Volume(np.zeros((6, 16, 16), np.float32), (2.0, 1.0, 1.0), modality="CT")
    assert expected_frames(_asm(volume_to_datasets(vol, "CT")[:2])) is None  # the header does not say
    assert expected_frames(_asm(volume_to_datasets(vol, "CT", header={"ImagesInAcquisition": 6})[:2])) == 6
    # Dynamic MR: 3 time points of 2 slices; known once the second time point starts.
    dyn = []
    for t in (1, 2, 3):
        for d in volume_to_datasets(Volume(np.zeros((2, 16, 16), np.float32), (2.0, 1.0, 1.0)), "MR",
                                    header={"NumberOfTemporalPositions": 3, "TemporalPositionIdentifier": t}):
            dyn.append(d)
    assert expected_frames(_asm(dyn[:2])) is None
    assert expected_frames(_asm(dyn[:3])) == 6
    one = volume_to_datasets(vol, "CT")[0]
    one.NumberOfFrames = 6  # enhanced multi-frame: the instance says how many frames the series has
    asm = SeriesAssembler("x")
    asm._first_ds = one  # header-only: expected_frames reads the first header
    asm._instances = {"1": (None, one)}  # type: ignore[dict-item]
    assert expected_frames(asm) == 6
