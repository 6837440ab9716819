from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets.motion import (
    MotionParams,
    Pose,
    apply_motion,
    line_grid,
    motion_kspace,
    moved_line_mask,
    random_motion_params,
    severity_label,
    simulate_motion,
)

from scanqc.errors import ErrorCode, ScanQCError


@pytest.mark.parametrize("acq", ["2d", "3d"])
@pytest.mark.parametrize("ordering", ["linear", "centric"])
def test_zero_severity_reproduces_input(blob, acq, ordering):
    out, params = simulate_motion(blob, 0.0, np.random.default_rng(0), ordering=ordering, acquisition=acq)
    assert np.allclose(out, blob)
    assert moved_line_mask(params, blob.shape).sum() == 0
    # Identity poses through the k-space path also reproduce the input (magnitude of the FFT pair).
    ident = MotionParams((Pose(), Pose()), (0.0, 0.5), ordering, acq)
    axes = (0, 1, 2) if acq == "3d" else (1, 2)
    k = motion_kspace(blob, ident)
    assert np.allclose(np.abs(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes)), blob, atol=1e-5)


@pytest.mark.parametrize("acq", ["2d", "3d"])
@pytest.mark.parametrize("ordering", ["linear", "centric"])
def test_kspace_centre_kept_periphery_corrupted(blob, acq, ordering):
    rng = np.random.default_rng(1)
    params = random_motion_params(0.3, rng, blob.shape, ordering=ordering, acquisition=acq)
    axes = (0, 1, 2) if acq == "3d" else (1, 2)
    ref = np.fft.fftshift(np.fft.fftn(blob, axes=axes), axes=axes)
    k = motion_kspace(blob, params, (2.0, 2.0, 2.0))
    moved = moved_line_mask(params, blob.shape)
    _, radius = line_grid(blob.shape, ordering, acq)
    assert moved.any() and not moved.all()
    # Lines acquired in the reference pose are untouched, moved lines are not.
    same = np.broadcast_to(~moved[:, :, None], k.shape)
    assert np.allclose(k[same], ref[same], atol=1e-3 * np.abs(ref).max())
    sel = np.broadcast_to(moved[:, :, None], k.shape)
    assert np.linalg.norm(k[sel] - ref[sel]) > 0.1 * np.linalg.norm(ref[sel])
    # "As set": every moved line lies at or beyond r_on; the centre belongs to the reference pose.
    assert radius[moved].min() >= params.r_on - 1e-9
    # Image-domain k-space centre energy stays close; periphery energy changes more.
    out = apply_motion(blob, params, (2.0, 2.0, 2.0))
    k_out = np.abs(np.fft.fftshift(np.fft.fftn(out, axes=axes), axes=axes)) ** 2
    k_in = np.abs(ref) ** 2
    centre = np.broadcast_to((radius < params.r_on * 0.5)[:, :, None], k_in.shape)
    assert abs(k_out[centre].sum() / k_in[centre].sum() - 1) < 0.05


def test_severity_increases_corruption(blob):
    def err(s: float) -> float:
        errs = []
        for seed in range(4):
            out, _ = simulate_motion(blob, s, np.random.default_rng(seed), (2.0, 2.0, 2.0), ordering="linear",
                                     acquisition="2d")
            errs.append(np.linalg.norm(out - blob) / np.linalg.norm(blob))
        return float(np.mean(errs))

    e_mild, e_severe = err(0.25), err(0.9)
    assert 0 < e_mild < e_severe


def test_determinism_and_labels(blob):
    a, pa = simulate_motion(blob, 0.7, np.random.default_rng(5))
    b, pb = simulate_motion(blob, 0.7, np.random.default_rng(5))
    assert pa == pb and np.array_equal(a, b)
    assert [severity_label(s) for s in (0, 0.2, 0.8)] == ["none", "mild", "severe"]


def test_bad_severity_is_a_coded_error(blob):
    with pytest.raises(ScanQCError) as e:
        simulate_motion(blob, 1.5, np.random.default_rng(0))
    assert e.value.code == ErrorCode.USAGE and "1.5" in e.value.message
