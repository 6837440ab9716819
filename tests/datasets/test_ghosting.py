from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets.ghosting import GhostParams, apply_ghosting, ghost_offset, simulate_ghosting

from scanqc.errors import ScanQCError


@pytest.mark.parametrize("period", [2.0, 4.0, 8.0])
def test_ghosts_sit_at_n_over_period(period):
    n = 64
    a = np.zeros((2, n, 32), np.float32)
    a[:, 20:24, 10:14] = 1.0
    out = apply_ghosting(a, GhostParams(period, "amplitude", 0.4))
    profile = out[0, :, 12]
    off = int(ghost_offset(n, period))
    for sign in (1, -1):
        ghost = profile[(np.arange(20, 24) + sign * off) % n]
        # a / 2 per ghost; at period 2 the +N/2 and -N/2 ghosts coincide (Nyquist ghost).
        assert np.allclose(ghost, 0.4 if period == 2 else 0.2, atol=0.02)
    elsewhere = np.ones(n, bool)
    for shift in (0, off, -off):
        elsewhere[(np.arange(20, 24) + shift) % n] = False
    assert profile[elsewhere].max() < 0.02


def test_position_ghosts_follow_period():
    n, period = 64, 4.0
    a = np.zeros((1, n, 16), np.float32)
    a[:, 30, 8] = 1.0
    out = apply_ghosting(a, GhostParams(period, "position", 0.6), (1.0, 1.0, 1.0))
    energy = out[0, :, 8] ** 2
    off = int(ghost_offset(n, period))
    near = lambda c: energy[[(c + d) % n for d in (-1, 0, 1)]].sum()  # noqa: E731
    # First Bessel sideband at +-N/P, nothing half-way.
    assert near(30 + off) > 0.01 * near(30)
    assert near(30 - off) > 0.01 * near(30)
    assert near(30 + off // 2) < 0.1 * near(30 + off)


def test_zero_severity_and_errors():
    a = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    out, p = simulate_ghosting(a, 0.0, np.random.default_rng(0))
    assert np.allclose(out, a) and p.strength == 0
    with pytest.raises(ScanQCError, match=r"1\.0"):
        GhostParams(1.0)
