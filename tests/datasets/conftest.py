from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def blob() -> np.ndarray:
    """A small non-negative head-like object: ellipsoid with an inner structure (z, y, x)."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 48, 40)], indexing="ij")
    arr = np.where(z**2 / 0.6 + y**2 / 0.5 + x**2 / 0.4 < 1, 1.0, 0.0)
    arr += np.where(z**2 / 0.1 + (y - 0.2) ** 2 / 0.05 + x**2 / 0.1 < 1, 0.8, 0.0)
    return arr.astype(np.float32)
