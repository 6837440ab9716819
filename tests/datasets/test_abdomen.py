"""Domain-randomised abdominal CT generator: HU per structure per phase, label maps, coverage ends."""

from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets.abdomen import (
    ENHANCEMENT_SCALE,
    HU_TABLE,
    KIDNEY_CODES,
    LABELS,
    PHASES,
    bolus_hu,
    hu_bounds,
    make_abdomen,
    required_mask,
)
from scipy import ndimage

from scanqc.errors import ScanQCError

COARSE = {"spacing": (4.0, 3.5, 3.5), "thickness": 4.0}


@pytest.mark.parametrize("phase", PHASES)
def test_bolus_hu_within_the_stated_range_of_each_structure(phase):
    rng = np.random.default_rng(0)
    for enh in ("optimal", "suboptimal") if phase != "non_contrast" else ("optimal",):
        for _ in range(200):
            hu, meta = bolus_hu(rng, phase, enh)
            for s in HU_TABLE:
                lo, hi = hu_bounds(s, phase, enh)
                assert lo - 0.06 <= hu[s] <= hi + 0.06, (s, phase, enh, hu[s], lo, hi)
            assert ENHANCEMENT_SCALE[enh][0] <= meta["enhancement_scale"] <= ENHANCEMENT_SCALE[enh][1] or \
                phase == "non_contrast"


def test_bolus_ranges_follow_the_textbook_table_for_a_nominal_bolus():
    """k = 1 at the phase's nominal time lands inside the table's range (the curve's anchors are its mid-points)."""
    rng = np.random.default_rng(1)
    for phase, t in (("arterial", 35.0), ("portal_venous", 70.0), ("delayed", 240.0)):
        for _ in range(50):
            hu, _ = bolus_hu(rng, phase, time_s=t, scale=1.0)
            for s in ("aorta", "portal_vein", "ivc", "liver", "kidney_cortex", "kidney_medulla"):
                lo, hi = HU_TABLE[s][phase]
                w = (hi - lo) * 0.25
                assert lo - w - 8 <= hu[s] <= hi + w + 8, (s, phase, hu[s])
    # Physiology the classifier relies on: arterial aorta > portal-venous aorta > delayed aorta; the collecting
    # system is dark until excretion; a weak bolus keeps an arterial aorta under the 250 HU adequacy line.
    a = [bolus_hu(rng, p, time_s=t, scale=1.0)[0]["aorta"] for p, t in (("arterial", 35), ("portal_venous", 70),
                                                                          ("delayed", 240))]
    assert a[0] > a[1] > a[2]
    assert bolus_hu(rng, "portal_venous", time_s=80)[0]["collecting_system"] < 40
    assert bolus_hu(rng, "delayed", time_s=300)[0]["collecting_system"] > 150
    assert all(bolus_hu(rng, "arterial", "suboptimal")[0]["aorta"] < 250 for _ in range(100))
    with pytest.raises(ScanQCError):
        bolus_hu(rng, "non_contrast", "suboptimal")


def test_label_map_is_consistent_and_the_image_shows_each_labels_hu():
    vol, labels, info = make_abdomen(np.random.default_rng(3), "portal_venous", noise_hu=0.0, **COARSE)
    assert labels.shape == vol.shape and labels.dtype == np.uint8 and vol.modality == "CT"
    present = set(np.unique(labels).tolist())
    for name in ("liver", "spleen", "kidney_cortex", "kidney_medulla", "aorta", "ivc", "portal_vein",
                 "bone_cortical", "muscle", "subcutaneous_fat", "visceral_fat"):
        assert LABELS[name] in present, name
    assert present <= set(LABELS.values())
    # Kidneys: the medulla lies inside the cortex. Most of its one-voxel shell is cortex / collecting system /
    # sinus fat; the rest is where the medullary core reaches a pole or a vessel, bone or bowel was painted
    # over the kidney's edge (68 % on this draw at 4 mm).
    med = labels == LABELS["kidney_medulla"]
    shell = ndimage.binary_dilation(med, iterations=1) & ~med
    assert np.isin(labels[shell], (*KIDNEY_CODES, LABELS["visceral_fat"])).mean() > 0.6
    # Rendered HU: the median inside each eroded large structure is its drawn HU, up to offset and texture.
    off = info["scanner_offset_hu"]
    for name in ("liver", "spleen", "aorta", "muscle", "subcutaneous_fat"):
        m = ndimage.binary_erosion(labels == LABELS[name], iterations=1)
        if m.sum() < 20:
            continue
        assert abs(float(np.median(vol.array[m])) - info["hu"][name] - off) < 12, name
    # Required anatomy spans dome to kidneys, and the dome lies above the kidneys.
    assert info["liver_dome_z_mm"] > info["kidney_bottom_z_mm"]


@pytest.mark.parametrize("end", ["full", "superior", "inferior"])
def test_coverage_never_moves_anatomy_across_an_end(end):
    for seed in range(3):
        _, labels, info = make_abdomen(np.random.default_rng(seed), "arterial", coverage=end, **COARSE)
        req = required_mask(labels)
        top, bottom = bool(req[-1].any()), bool(req[0].any())  # slice 0 is inferior
        assert (top, bottom) == (end == "superior", end == "inferior"), (seed, end, info["coverage"])
        assert info["coverage"]["touches"] == ([] if end == "full" else [end])
        if end == "full":
            assert info["coverage"]["kidney_bottom_to_last_slice_mm"] > 0
            assert info["coverage"]["margin_superior_mm"] > 0


def test_margins_are_kept_exactly_for_a_full_scan():
    _, _, info = make_abdomen(np.random.default_rng(7), "delayed", margins_mm=(20.0, 10.0), **COARSE)
    c = info["coverage"]
    # The scan ends at least 10 mm (and at most one slice more) below the lowest required voxel.
    assert 10.0 <= c["margin_inferior_mm"] <= 10.0 + COARSE["thickness"] + 0.5
    assert 20.0 <= c["margin_superior_mm"] <= 20.0 + COARSE["thickness"] + 0.5


def test_bad_arguments_are_coded_errors():
    rng = np.random.default_rng(0)
    for kw in ({"phase": "venous"}, {"coverage": "both"}, {"variant": "dev"}, {"margins_mm": (-1.0, 5.0)}):
        with pytest.raises(ScanQCError):
            make_abdomen(rng, **{"phase": "arterial", **kw}, **COARSE)
