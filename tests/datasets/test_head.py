"""Physical properties of the domain-randomised heads (scanqc.datasets.head)."""

from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets import generate
from scanqc.datasets.coverage import end_touches
from scanqc.datasets.head import (
    CONTRASTS,
    LABELS,
    PE_AXES,
    acquire_head,
    head_artefact,
    head_coverage_case,
    head_labels,
    render,
)
from scanqc.datasets.manifest import read_manifest

from scanqc.series import load_series


@pytest.fixture(scope="module")
def head():
    return head_labels(np.random.default_rng(3))


def test_head_has_extracerebral_layers_around_the_brain(head):
    lab = head.labels
    present = {k for k, i in LABELS.items() if (lab == i).any()}
    assert {"wm", "gm", "csf", "bone", "diploe", "muscle", "fat", "skin", "vitreous", "sinus_air", "marrow"} <= present
    # Above the skull base, a ray from the brain outwards meets CSF, bone, scalp/fat, then air: a head, not a brain.
    brain = (lab == LABELS["wm"]) | (lab == LABELS["gm"])
    zc = int(np.median(np.where(brain.any(axis=(1, 2)))[0])) + 10
    row = lab[zc, lab.shape[1] // 2]
    inside = np.flatnonzero(np.isin(row, [LABELS["wm"], LABELS["gm"]]))
    beyond = row[inside[-1] + 1:]
    first = {int(v) for v in beyond[: np.argmax(beyond == 0)]}
    # (skin, 1-2.5 mm, can fall between the 3 mm grid's voxels along one ray; it is in the label set above)
    assert LABELS["bone"] in first and bool({LABELS["fat"], LABELS["muscle"], LABELS["skin"]} & first)
    # A neck below the brain: tissue in the lowest slice, well below the cerebellum.
    assert (lab[0] > 0).sum() > 500


@pytest.mark.parametrize("contrast", sorted(CONTRASTS))
def test_rendered_label_intensities_follow_the_contrast(head, contrast):
    means = dict(CONTRASTS[contrast])
    img = render(head, means, np.random.default_rng(0))
    core = {k: i for k, i in LABELS.items() if k in ("fat", "bone", "vitreous", "muscle")}
    for name, i in core.items():
        m = head.labels == i
        # Erode away the partial-volume rim of the PSF blur before measuring the tissue's own signal.
        from scipy import ndimage

        m = ndimage.binary_erosion(m, iterations=1)
        if m.sum() < 30:
            continue
        assert np.median(img[m]) == pytest.approx(means[name], abs=0.08 + 0.15 * means[name]), name
    assert np.median(img[head.labels == 0]) < 0.02  # air has no signal before noise
    # The contrast's defining order holds: CSF darker than WM on T1/FLAIR, brighter on T2/PD.
    csf = np.median(img[ndimage.binary_erosion(head.labels == LABELS["csf"])])
    fat = np.median(img[ndimage.binary_erosion(head.labels == LABELS["fat"])])
    if contrast in ("t2", "pd"):
        assert csf > 0.6
    else:
        assert csf < 0.35 and fat > csf


@pytest.mark.parametrize("pe", sorted(PE_AXES))
def test_ghosts_lie_along_the_phase_encode_axis(pe):
    rng = np.random.default_rng(1)
    arr = np.zeros((16, 96, 96), np.float32)
    arr[:, 28:68, 33:63] = 1.0
    brain = arr > 0
    out, info = head_artefact("periodic", 1.0, rng)(arr, (3.0, 2.0, 2.0), PE_AXES[pe], "2d", brain)
    diff = np.abs(out - arr)
    ax = PE_AXES[pe]
    # Energy in the bands beside the object along the PE axis vs along the other in-plane axis.
    along_pe = diff[:, 70:, 33:63].sum() + diff[:, :26, 33:63].sum() if ax == 1 else \
        diff[:, 28:68, 65:].sum() + diff[:, 28:68, :31].sum()
    along_fe = diff[:, 28:68, 65:].sum() + diff[:, 28:68, :31].sum() if ax == 1 else \
        diff[:, 70:, 33:63].sum() + diff[:, :26, 33:63].sum()
    assert info["axis"] == ax and along_pe > 20 * max(along_fe, 1e-3)


def test_rigid_motion_is_written_with_its_phase_encode_direction(tmp_path):
    m = generate("motion", 2, tmp_path / "m", seed=11, anatomy="head", fmt="dicom")
    rows = read_manifest(m)
    for r in rows:
        series = load_series(r.resolve(m.parent))[0][0]
        assert series.get("InPlanePhaseEncodingDirection") == r.provenance["phase_encode"]
        assert r.provenance["generator"].endswith(":head") and r.body_region == "brain"
        art = r.provenance["artefact"]
        if r.label != "none":
            assert art["artefact_to_noise"] >= 0.3  # the visible-artefact rule holds for heads too
        assert series.volume is not None and np.isfinite(series.volume.array).all()


def test_field_of_view_never_cuts_the_required_brain():
    for i in range(2):
        vol, req, _prov = acquire_head(np.random.default_rng(100 + i))
        assert req.any() and end_touches(req, vol) == []
        # and not only at the body ends: every face of the box keeps the brain inside
        for ax in range(3):
            assert not np.take(req, 0, axis=ax).any() and not np.take(req, -1, axis=ax).any()


@pytest.mark.parametrize("label", ["superior", "inferior", "full"])
def test_coverage_cases_cut_only_the_labelled_end(label):
    _vol, fields, prov = head_coverage_case(np.random.default_rng(7), label, "train")
    assert fields["missing"] == ([] if label == "full" else [label])
    assert prov["coverage"]["touching"] == fields["missing"]  # the image shows the label, and only it
    if label != "full":
        assert prov["coverage"]["cut_mm"] > 0
