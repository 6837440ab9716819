"""Shared fixtures: real DICOM series written with pydicom, pydicom's own bundled files, NIfTI."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from scanqc.io.dicom_write import write_dicom_series
from scanqc.volume import Volume

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def make_volume(shape: tuple[int, int, int] = (24, 48, 40), spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
                modality: str = "CT", seed: int = 0) -> Volume:
    """A smooth body-like blob (HU for CT) so checks see plausible values."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (y**2 + x**2) < 0.7
    if modality == "CT":
        arr = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
    else:
        arr = np.where(body, 600.0, 5.0) * (1 + 0.2 * z) + np.abs(rng.normal(0, 5, shape))
    return Volume(arr.astype(np.float32), spacing, (-100.0, -120.0, 50.0), modality=modality)


@pytest.fixture
def pydicom_files() -> Path:
    return PYDICOM_TEST_FILES


@pytest.fixture
def write_series(tmp_path: Path) -> Callable[..., Path]:
    """write_series(name, modality=, shape=, spacing=, header=, seed=) -> folder of a DICOM series."""

    def _write(name: str = "series", modality: str = "CT", shape=(24, 48, 40), spacing=(2.5, 0.8, 0.8),
               header: dict | None = None, seed: int = 0, volume: Volume | None = None, **kw) -> Path:
        vol = volume if volume is not None else make_volume(shape, spacing, modality, seed)
        folder = tmp_path / name
        write_dicom_series(vol, folder, modality, header=header, **kw)
        return folder

    return _write
