from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets.base import mni_t1, required_brain_mask
from scanqc.datasets.bias_field import apply_bias_field, random_bias_coefficients
from scanqc.datasets.deform import Deformation, apply_deformation, random_deformation
from scanqc.datasets.geometry import canonicalize, crop_pad, reorient
from scanqc.datasets.intensity import apply_gamma
from scanqc.datasets.noise import apply_ct_noise, apply_rician_noise
from scanqc.datasets.resample import apply_resample

from scanqc.errors import ScanQCError


def test_mni_base_offline_and_canonical():
    v = mni_t1(2.0)
    assert v.shape == (94, 116, 98) and v.spacing == (2.0, 2.0, 2.0) and v.modality == "MR"
    assert np.allclose(v.direction, np.eye(3)[:, ::-1])
    m = required_brain_mask(2.0)
    z = np.flatnonzero(m.any((1, 2)))
    assert 0 < z[0] and z[-1] < v.shape[0] - 1  # vertex and cerebellum inside the template
    with pytest.raises(ScanQCError, match=r"1\.5"):
        mni_t1(1.5)


def test_identity_twins_reproduce_input(blob):
    assert np.array_equal(apply_bias_field(blob, [0.0] * 20), blob)
    assert np.array_equal(apply_rician_noise(blob, 0.0, 0), blob)
    assert np.array_equal(apply_ct_noise(blob, 0.0, 0), blob)
    assert np.array_equal(apply_gamma(blob, 1.0), blob)
    assert np.array_equal(apply_deformation(blob, Deformation()), blob)
    with pytest.raises(ScanQCError, match="-1"):
        apply_gamma(blob, -1)


def test_rician_background_and_bias_smoothness(blob):
    noisy = apply_rician_noise(np.zeros((8, 32, 32), np.float32), 2.0, 0)
    assert abs(noisy.mean() - 2.0 * np.sqrt(np.pi / 2)) < 0.1  # Rayleigh mean in air
    coef = random_bias_coefficients(np.random.default_rng(0), 3, (0.1, 0.3))
    out = apply_bias_field(np.ones_like(blob), coef)
    assert out.min() > 0.2 and out.max() < 5 and np.abs(np.diff(out, axis=2)).max() < 0.2


def test_geometry_preserving_transforms():
    v = mni_t1(2.0)
    sag = reorient(v, (2, 0, 1), (False, True, False))
    assert sag.slice_axis_label == "sagittal"
    assert np.array_equal(canonicalize(sag).array, v.array)
    assert np.allclose(canonicalize(sag).origin, v.origin)
    c = crop_pad(v, (-3, 2, 0), (1, -4, 5))
    assert np.allclose(c.affine @ [0, 0, 0, 1], v.affine @ [3, -2, 0, 1])
    r = apply_resample(v, (5.0, 2.5, 2.5))
    assert np.allclose(r.extent_mm, v.extent_mm, atol=5.0)
    d = random_deformation(np.random.default_rng(0), (8, 14), (1.05, 1.1), True, (2.5, 5.0))
    out = apply_deformation(v.array, d, v.spacing)
    assert out.shape == v.shape and 0.3 < np.corrcoef(out.ravel(), v.array.ravel())[0, 1] < 0.99
