"""Brain-MR coverage from geometry (coverage 2.1.0): the decision rule on known masks, the model plumbing
(delegate, evaluation outputs), and training's crop-then-resample path equal to serving's preprocess."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from scanqc.models.registry import BUNDLED_DIR, ModelRegistry

from scanqc.checks import brain_coverage as bc
from scanqc.errors import ScanQCError
from scanqc.preprocessing import canonicalize, preprocess
from scanqc.volume import Volume

MODEL = BUNDLED_DIR / "coverage" / "2.1.0"
D, H, W = bc.SPEC.shape


def _ellipsoid(top: float, bottom: float) -> np.ndarray:
    """A brain-like ellipsoid on the grid spanning slices [top, bottom] (may lie beyond the grid: then cut)."""
    z, y, x = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    c, r = (top + bottom) / 2, (bottom - top) / 2
    return ((z - c) / r) ** 2 + ((y - 24) / 18) ** 2 + ((x - 24) / 15) ** 2 <= 1.0


def test_a_brain_inside_the_scan_is_covered_with_its_distances_in_mm():
    g = bc.measure(_ellipsoid(10, 69), si_mm=2.5, pixel_mm2=16.0, threshold=0.1)
    assert g["cut"] == []
    # Brain from grid slice 10 to 69 of 0..79: 10 slices above it, 10 below, 2.5 mm each.
    assert g["distance_mm"] == {"superior": pytest.approx(25.0, abs=2.6), "inferior": pytest.approx(25.0, abs=2.6)}
    assert g["brain_extent_mm"] == pytest.approx(150.0, abs=5.1)


@pytest.mark.parametrize("end", ["superior", "inferior"])
def test_a_brain_cut_by_the_field_of_view_is_cut_at_that_end(end):
    mask = _ellipsoid(-12, 60) if end == "superior" else _ellipsoid(20, 92)
    g = bc.measure(mask, 2.5, 16.0, 0.1)
    assert g["cut"] == [end] and g["distance_mm"][end] == 0.0
    assert g["end_fraction"][end] > 0.4 and 0 < g["missing_estimate_mm"][end] < 120


def test_stray_voxels_in_the_end_slices_do_not_cut_a_covered_brain():
    mask = _ellipsoid(10, 69)
    mask[0, 5:9, 5:9] = True  # a speck of false positive in the first slice (16 voxels)
    mask[-1, 40:44, 40:44] = True
    g = bc.measure(mask, 2.5, 16.0, 0.1)
    assert g["cut"] == [] and g["distance_mm"]["superior"] > 20
    # A brain section reaching the first slice (3 grid slices of the dome cut off) does count.
    assert bc.end_fractions(_ellipsoid(-3, 69))[0] > 0.1


def test_cut_score_maps_the_threshold_to_one_half_monotonically():
    t = 0.12
    xs = np.linspace(0, 1, 101)
    ys = [bc.cut_score(x, t) for x in xs]
    assert bc.cut_score(t, t) == pytest.approx(0.5) and ys[0] == 0.0 and ys[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(ys))


def test_training_crop_then_resample_is_serving_preprocess_of_the_cropped_series():
    from scanqc.training.brain_mask import make_pair

    from scanqc.preprocessing import resample_inplane

    rng = np.random.default_rng(3)
    arr = rng.random((70, 90, 80), dtype=np.float32) * 500
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # IPL: canonical already
    vol = Volume(arr, (3.0, 2.5, 2.5), (0.0, 0.0, 0.0), direction, "MR")
    a, _ = canonicalize(vol)
    case = {"image": resample_inplane(a, (H, W)), "mask": resample_inplane(a > 250, (H, W)).astype(np.float16)}
    lo, hi = 7, 61
    x, _ = make_pair(case, lo, hi)
    cropped = Volume(np.ascontiguousarray(arr[lo:hi]), vol.spacing, vol.origin, direction, "MR")
    np.testing.assert_allclose(x, preprocess(cropped, bc.SPEC, "MR"), atol=1e-5)


# -- the shipped model ------------------------------------------------------------------------------

def test_coverage_2_1_1_is_promoted_on_the_blind_test_and_delegates_ct_to_2_0_0():
    reg = ModelRegistry.for_folder(BUNDLED_DIR)
    assert reg.get("coverage").version == "2.1.1"
    record = json.loads((BUNDLED_DIR / "coverage" / "promoted.json").read_text())
    assert record["comparison"]["held_out"]["independent"] is True  # decided on the cross-simulator
    m = reg.find("coverage", "2.1.1")
    assert m.geometric and m.spec.shape == bc.SPEC.shape and m.metadata["domain"]["brain_mask"]["modality"] == "MR"
    ct = m.for_modality("CT")
    assert ct.version == "2.0.0" and not ct.geometric and m.for_modality("MR") is m
    assert all(0 < t < 1 for t in bc.cut_fractions(m.metadata["geometry"]).values())
    assert (MODEL / "model.onnx").stat().st_size < 3_000_000
    # 2.1.1 is 2.1.0's network with a lower superior cut fraction (shallow vertex cuts), inferior unchanged
    old = reg.find("coverage", "2.1.0")
    new_t, old_t = bc.cut_fractions(m.metadata["geometry"]), bc.cut_fractions(old.metadata["geometry"])
    assert new_t["superior"] < old_t["superior"] and new_t["inferior"] == old_t["inferior"]
    x = np.random.default_rng(0).uniform(-0.5, 2.0, (1, 1, *bc.SPEC.shape)).astype(np.float32)
    np.testing.assert_array_equal(m.run(x), old.run(x))


def test_rethreshold_keeps_the_graph_and_refuses_a_cut_fraction_off_the_validation_plateau(tmp_path, monkeypatch):
    from scanqc.training.brain_mask import rethreshold

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="off the validation plateau"):
        rethreshold(MODEL, tmp_path, "9.0.0", {"superior": 0.5}, "too high")
    dest = rethreshold(MODEL, tmp_path, "9.0.1", {"superior": 0.02}, "test",
                       command=f"python -m scanqc.training.brain_mask rethreshold --out {tmp_path}")
    m = ModelRegistry.for_folder(tmp_path).find("coverage", "9.0.1")
    assert bc.cut_fractions(m.metadata["geometry"])["superior"] == 0.02
    assert m.metadata["geometry"]["rethresholded"]["from"].startswith("2.1.0")
    x = np.random.default_rng(1).uniform(-0.5, 2.0, (1, 1, *bc.SPEC.shape)).astype(np.float32)
    orig = ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", "2.1.0")
    np.testing.assert_array_equal(m.run(x), orig.run(x))
    assert "test" not in m.metadata["metrics"]  # the old rule's test figures are not carried over
    assert (dest / "model.onnx").exists()
    assert str(tmp_path) not in (dest / "metadata.json").read_text()  # the recorded command is portable


def test_a_missing_delegate_is_a_coded_error(tmp_path):
    dest = tmp_path / "coverage" / "2.1.0"
    shutil.copytree(MODEL, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    meta["delegate"] = {"CT": "9.9.9"}
    (dest / "metadata.json").write_text(json.dumps(meta))
    m = ModelRegistry.for_folder(tmp_path).find("coverage", "2.1.0")
    with pytest.raises(ScanQCError, match=r"delegate coverage 9\.9\.9"):
        m.for_modality("CT")


def test_brain_mask_logits_become_coverage_outputs():
    m = ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", "2.1.0")
    inside = np.where(_ellipsoid(10, 69), 5.0, -5.0)
    cut = np.where(_ellipsoid(-12, 60), 5.0, -5.0)
    out = m.postprocess(np.stack([inside, cut])[:, None].astype(np.float32))
    assert out[0]["missing_superior"] < 0.5 and out[0]["missing_inferior"] < 0.5
    assert out[1]["missing_superior"] > 0.5 and out[1]["missing_inferior"] < 0.5


@pytest.mark.parametrize("abdominal", ["cnn", "anatomy"])
def test_evaluation_runs_mr_rows_through_the_brain_mask_and_ct_rows_as_served(tmp_path, monkeypatch, abdominal):
    # CT rows: the delegate CNN under SCANQC_ABDOMINAL_COVERAGE=cnn, else the geometry check `scanqc check` runs.
    from conftest import make_volume

    from scanqc.checks import abdomen_coverage

    monkeypatch.setattr(abdomen_coverage, "ENABLED", abdominal == "anatomy")
    from scanqc.datasets.generate import write_case
    from scanqc.datasets.manifest import ManifestRow, write_manifest
    from scanqc.models.evaluate import case_outputs, read_manifest

    rows = []
    for i, mod in enumerate(("CT", "MR", "CT")):
        vol = make_volume((40, 48, 48), (4.0, 4.0, 4.0), mod, seed=i)
        path = write_case(vol, tmp_path, f"c{i}", "nifti", {"Modality": mod})
        rows.append(ManifestRow(f"c{i}", path, mod, "coverage", "full", body_region="abdomen" if mod == "CT" else
                                "brain", split="test", provenance={"generator": "test"}))
    write_manifest(rows, tmp_path / "manifest.csv")
    got = read_manifest(tmp_path / "manifest.csv", "coverage", "all")
    m = ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", "2.1.0")
    out = case_outputs(m, got)
    assert "end_fraction" in out[1] and "end_fraction" not in out[0] and "end_fraction" not in out[2]
    if abdominal == "anatomy":  # these random CTs hold no liver or kidneys: the check skips, nothing flagged
        assert all(out[i] == {"missing_superior": 0.0, "missing_inferior": 0.0} for i in (0, 2))
        return
    ct = m.for_modality("CT")
    ref = case_outputs(ct, [got[0], got[2]])  # the delegate alone: its own probabilities
    for o, r in zip((out[0], out[2]), ref):
        for k in ("missing_superior", "missing_inferior"):
            t = float(ct.thresholds[k]["fail"])
            assert o[k] == pytest.approx(bc.cut_score(r[k], t)) and (o[k] >= 0.5) == (r[k] >= t)


@pytest.mark.parametrize("cut", [0.0, 1.5, "0.1", {"superior": 0.1}])
def test_a_bad_cut_fraction_is_a_bad_model(tmp_path, cut):
    from scanqc.errors import ErrorCode

    dest = tmp_path / "coverage" / "2.1.0"
    shutil.copytree(MODEL, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    meta["geometry"]["cut_fraction"] = cut
    (dest / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ScanQCError) as e:
        ModelRegistry.for_folder(tmp_path).find("coverage", "2.1.0")
    assert e.value.code == ErrorCode.BAD_MODEL and "cut_fraction" in e.value.message
