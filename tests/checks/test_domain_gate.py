"""Out-of-domain gate: series a model was not trained for are skipped with the reason, never scored.

Real DICOM series written to disk, read back through ``check_path`` with the bundled models.
"""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.io.dicom_write import write_dicom_series
from scanqc.pipeline import check_path
from scanqc.volume import Volume


def _checks(folder):
    (v,) = check_path(folder)
    assert v.status != "error", v.to_dict()
    return v.checks


def _blob(shape, spacing, value=600.0, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.normal(20, 5, shape).astype(np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [(n - 1) / 2 for n in shape]
    r = ((zz - c[0]) / (shape[0] * 0.4)) ** 2 + ((yy - c[1]) / (shape[1] * 0.35)) ** 2 \
        + ((xx - c[2]) / (shape[2] * 0.3)) ** 2
    arr[r <= 1] += value
    return Volume(np.abs(arr), spacing, modality="MR")


def test_knee_mr_is_outside_the_motion_and_coverage_domain(tmp_path):
    write_dicom_series(_blob((60, 128, 128), (2.0, 1.2, 1.2)), tmp_path / "knee", "MR",
                       header={"BodyPartExamined": "KNEE", "SeriesDescription": "PD FS SAG KNEE"})
    checks = _checks(tmp_path / "knee")
    for name in ("motion", "coverage"):
        assert checks[name].status == "skipped", checks[name]
        assert "outside the model's domain" in checks[name].message and "KNEE" in checks[name].message
        assert checks[name].score is None


def test_single_slice_is_skipped_not_scored(tmp_path):
    write_dicom_series(_blob((1, 192, 192), (5.0, 1.2, 1.2)), tmp_path / "one", "MR",
                       header={"BodyPartExamined": "HEAD", "SeriesDescription": "T2 AX"})
    checks = _checks(tmp_path / "one")
    for name in ("motion", "coverage"):
        assert checks[name].status == "skipped" and checks[name].score is None


@pytest.mark.parametrize(("shape", "spacing", "what"), [
    ((14, 192, 192), (10.0, 1.2, 1.2), "voxel size"),  # 10 mm slices: coarser than any training acquisition
    ((20, 192, 192), (2.0, 1.2, 1.2), "scanned extent"),  # a 40 mm slab is not a whole head
])
def test_head_series_outside_the_trained_acquisitions_are_skipped(tmp_path, shape, spacing, what):
    write_dicom_series(_blob(shape, spacing), tmp_path / "s", "MR",
                       header={"BodyPartExamined": "HEAD", "SeriesDescription": "T1 AX"})
    motion = _checks(tmp_path / "s")["motion"]
    assert motion.status == "skipped" and "outside the model's domain" in motion.message and what in motion.message


def test_a_whole_head_acquisition_is_inside_the_domain(tmp_path):
    write_dicom_series(_blob((40, 160, 160), (4.0, 1.3, 1.3)), tmp_path / "h", "MR",
                       header={"BodyPartExamined": "HEAD", "SeriesDescription": "T2 AX"})
    motion = _checks(tmp_path / "h")["motion"]
    assert motion.status in ("pass", "warn", "fail") and motion.score is not None
