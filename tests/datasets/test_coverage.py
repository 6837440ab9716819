from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets.base import mni_t1, required_brain_mask
from scanqc.datasets.coverage import CoverageParams, crop_coverage, end_touches, random_coverage
from scanqc.datasets.ct_phantom import make_abdomen_phantom, required_abdomen_mask
from scanqc.datasets.geometry import reorient, reorient_array

from scanqc.errors import ScanQCError


def _cases():
    brain = mni_t1(2.0)
    yield brain, required_brain_mask(2.0)
    sag = reorient(brain, (2, 0, 1), (False, True, False))  # sagittal, superior at index 0
    yield sag, reorient_array(required_brain_mask(2.0), (2, 0, 1), (False, True, False))
    ct, labels, _ = make_abdomen_phantom(np.random.default_rng(0), "portal_venous", spacing=(4.0, 4.0, 4.0),
                                         margins_mm=(80.0, 60.0))
    yield ct, required_abdomen_mask(labels)


@pytest.mark.parametrize("end", ["full", "superior", "inferior"])
def test_crop_removes_labeled_end_only(end):
    rng = np.random.default_rng(0)
    for vol, mask in _cases():
        params = random_coverage(rng, end, margin_mm=(4.0, 8.0))
        out, out_mask, info = crop_coverage(vol, mask, params)
        assert end_touches(out_mask, out) == params.missing
        assert info["missing"] == params.missing
        if end != "full":
            assert out_mask.sum() < mask.sum()  # anatomy really removed
            assert info["cut_slices"] >= 2
        else:
            assert out_mask.sum() == mask.sum()  # all anatomy kept
        # Geometry follows the crop: a kept voxel keeps its world position.
        idx = np.argwhere(out_mask)[0]
        world = out.affine @ np.r_[idx, 1]
        src = np.linalg.solve(vol.affine, world)[:3]
        assert np.allclose(src, np.round(src), atol=1e-6) and mask[tuple(np.round(src).astype(int))]


def test_bad_params():
    with pytest.raises(ScanQCError, match="'top'"):
        CoverageParams("top")  # type: ignore[arg-type]
    with pytest.raises(ScanQCError, match="empty"):
        crop_coverage(mni_t1(2.0), np.zeros(mni_t1(2.0).shape, bool), CoverageParams())
