"""The localisation's fast morphology, argmax and detail-grid boxes equal what they replaced (scipy.ndimage,
numpy's argmax, a bounding box of the mapped class map), on masks shaped like organs and at the array's edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from scanqc.checks import abdomen_seg as seg
from scanqc.checks.abdomen_anatomy import _dilate_cross, dilate_box, erode_cross


def _bbox(m: np.ndarray, margin: int) -> tuple[slice, ...]:
    # The box the measurements took before detail_boxes: a pass over the mask per axis.
    idx = [np.flatnonzero(m.any(tuple(j for j in range(3) if j != i))) for i in range(3)]
    return tuple(slice(max(int(ix[0]) - margin, 0), int(ix[-1]) + margin + 1) if ix.size else slice(0, 0)
                 for ix in idx)


def _blobs(seed: int, shape: tuple[int, int, int] = (23, 31, 29)) -> np.ndarray:
    # Smoothed noise thresholded: blobs, holes, one-voxel strands, and voxels on every face of the array.
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.1


@pytest.mark.parametrize("seed", range(4))
def test_shifted_morphology_is_scipys(seed):
    m = _blobs(seed)
    assert m[0].any() and m[-1].any() and m[:, :, 0].any()  # the edges are exercised
    cross2d = ndimage.generate_binary_structure(3, 1)
    cross2d[0] = cross2d[2] = False
    for it in (1, 2):
        np.testing.assert_array_equal(erode_cross(m, it), ndimage.binary_erosion(
            m, structure=ndimage.generate_binary_structure(3, 1), iterations=it))
        np.testing.assert_array_equal(erode_cross(m, it, (1, 2)),
                                      ndimage.binary_erosion(m, structure=cross2d, iterations=it))
        np.testing.assert_array_equal(dilate_box(m, it), ndimage.binary_dilation(
            m, structure=np.ones((3, 3, 3), bool), iterations=it))
    np.testing.assert_array_equal(dilate_box(m, 1, (1, 2)),
                                  ndimage.binary_dilation(m, structure=np.ones((1, 3, 3), bool)))
    np.testing.assert_array_equal(_dilate_cross(m), ndimage.binary_dilation(m))


def test_first_argmax_is_numpys_with_ties_to_the_first_class():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 4, (9, 5, 6, 7)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(seg.first_argmax(p), p.argmax(0).astype(np.uint8))


def test_detail_boxes_are_the_boxes_of_the_mapped_class_map():
    rng = np.random.default_rng(4)
    # A working grid whose crop reaches past the full grid on one side (offset < 0) and not on the other.
    for offset, full in (((-5, 3), (12, 70, 58)), ((2, -1), (12, 66, 64))):
        detail = np.zeros((25, 2 * full[1] + 1, 2 * full[2]), np.float32)
        g = seg.WorkGrid(detail, (3.0,) * 3, np.zeros((full[0], seg.INPLANE, seg.INPLANE), np.float32),
                         (6.0,) * 3, full, offset, 75.0)
        cls = (ndimage.gaussian_filter(rng.normal(size=(full[0], seg.INPLANE, seg.INPLANE)), 1.5) * 9
               ).clip(0, 7).astype(np.uint8)
        cls[:, 0, :] = 6  # a class on the crop's edge, partly outside the full grid
        cd = seg.to_detail(g, cls)
        boxes = seg.detail_boxes(g, cls, 1)
        assert set(boxes) == {c for c in range(1, 8) if (cd == c).any()}
        for c, box in boxes.items():
            assert box == _bbox(cd == c, 1)
            np.testing.assert_array_equal(seg.to_detail(g, cls, box), cd[box])
