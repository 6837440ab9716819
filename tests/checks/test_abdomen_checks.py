"""Abdominal CT by measurement: localisation recovers the generated HU, coverage by geometry, out-of-domain gate,
the shipped HU classifier (ONNX parity with its own coefficients), all on real generated volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scanqc.datasets.abdomen import PHASES, bolus_hu, make_abdomen, make_labels, render

from scanqc.checks import abdomen_coverage
from scanqc.checks.abdomen_anatomy import FEATURE_VERSIONS, FEATURES, locate
from scanqc.checks.base import CheckContext
from scanqc.checks.contrast_phase import ContrastPhaseCheck
from scanqc.checks.coverage import CoverageCheck
from scanqc.series import Series
from scanqc.volume import Volume

COARSE = {"spacing": (3.0, 3.0, 3.0), "thickness": 3.0}
MODELS = Path(__file__).resolve().parents[2] / "models" / "contrast_phase"


@pytest.fixture(autouse=True)
def _coverage_by_anatomy(monkeypatch):
    monkeypatch.setattr(abdomen_coverage, "ENABLED", True)


def _series(vol: Volume) -> Series:
    s = Series(input="x", series_uid="1.2.3", modality="CT", volume=vol, source="nifti")
    s.sidecar["BodyPartExamined"] = "ABDOMEN"
    return s


@pytest.mark.parametrize("phase", PHASES)
def test_measurement_recovers_the_generated_hu(phase):
    # Regression (2.0.0's rules): unenhanced, the aorta search landed on bone (380 HU on this draw).
    vol, _, info = make_abdomen(np.random.default_rng(21), phase, noise_hu=10.0, **COARSE)
    an = locate(vol)
    assert an.in_domain and an.found["liver"] and an.found["aorta"]
    hu, off = info["hu"], info["scanner_offset_hu"]
    assert abs(an.hu["liver"] - hu["liver"] - off) < 15, (an.hu, hu)
    assert abs(an.hu["aorta"] - hu["aorta"] - off) < 30, (an.hu, hu)
    assert an.features().shape == (len(FEATURES),)


def test_full_scan_with_kidneys_10_mm_above_the_last_slice_passes():
    # Regression (2.0.0's rules): the liver-dome rule fired on chest tissue 30 mm above the dome.
    vol, _, info = make_abdomen(np.random.default_rng(5), "portal_venous", margins_mm=(30.0, 13.0), **COARSE)
    # The lowest kidney voxel's centre lies 10-16 mm above the last slice's centre.
    assert 10.0 <= info["coverage"]["kidney_bottom_to_last_slice_mm"] <= 16.0
    r = CoverageCheck()(_series(vol), CheckContext())
    assert r.status == "pass", r.message
    assert r.extra["method"] == "anatomy" and r.extra["kidneys_above_last_slice_mm"] >= 6.0
    assert r.extra["liver_dome_below_first_slice_mm"] > 0


def test_liver_dome_cut_fails_the_superior_end():
    vol, _, info = make_abdomen(np.random.default_rng(6), "arterial", coverage="superior", cut_fraction=0.15,
                                **COARSE)
    assert info["coverage"]["touches"] == ["superior"]
    r = CoverageCheck()(_series(vol), CheckContext())
    assert r.status == "fail" and r.extra["missing"] == ["superior"], r.message
    assert "liver dome" in r.message and "superiorly" in r.action


def test_kidneys_cut_fails_the_inferior_end():
    vol, _, _ = make_abdomen(np.random.default_rng(8), "portal_venous", coverage="inferior", cut_fraction=0.2,
                                **COARSE)
    r = CoverageCheck()(_series(vol), CheckContext())
    assert r.status == "fail" and r.extra["missing"] == ["inferior"], r.message
    assert "kidneys cut at the inferior end" in r.message and "inferiorly" in r.action
    assert r.extra["kidneys_above_last_slice_mm"] == 0.0


def _chest_only() -> Volume:
    """Lungs, heart and chest wall: the generator's anatomy above the liver dome, no liver or kidneys."""
    rng = np.random.default_rng(4)
    labels, _, _ = make_labels(rng, COARSE["spacing"], z_range=(160.0, -40.0))
    liver_top = np.flatnonzero((labels == 6).any((1, 2)))[-1]
    labels = labels[liver_top + 6:]
    hu, _ = bolus_hu(rng, "arterial")
    img, _ = render(labels, hu, COARSE["spacing"], rng, 3.0, 10.0, "arterial")
    return Volume(img, COARSE["spacing"], modality="CT")


def test_chest_only_ct_is_outside_the_domain_of_both_checks():
    # Regression (2.0.0's rules): the kidney rule found 'kidneys' in the paravertebral chest of this draw.
    s = _series(_chest_only())
    an = locate(s.volume)
    assert not an.in_domain and "no liver or kidneys in view" in an.reason, an.reason
    r = CoverageCheck()(s, CheckContext())
    assert r.status == "skipped" and r.message.startswith("outside the model's domain (")
    from scanqc.models.registry import ModelRegistry

    folder, _ = _shipped()
    model = ModelRegistry(user_dir=Path("/nonexistent")).find("contrast_phase", folder.name)
    r = ContrastPhaseCheck()(s, CheckContext(models={"contrast_phase": model}))
    assert r.status == "skipped" and r.message.startswith("outside the model's domain ("), r.message
    assert "predicted" not in r.extra


def _pelvis_only() -> Volume:
    """From 40 mm below the lowest kidney voxel down: bowel, iliac wings, vessels, no liver or kidneys."""
    rng = np.random.default_rng(9)
    labels, _, _ = make_labels(rng, COARSE["spacing"], z_range=(40.0, -520.0))
    kid_bottom = np.flatnonzero(np.isin(labels, (8, 9, 10)).any((1, 2)))[0]
    labels = labels[:kid_bottom - 14]
    hu, _ = bolus_hu(rng, "portal_venous")
    img, _ = render(labels, hu, COARSE["spacing"], rng, 3.0, 10.0, "portal_venous")
    return Volume(img, COARSE["spacing"], modality="CT")


def test_pelvis_only_ct_is_outside_the_domain():
    an = locate(_pelvis_only())
    assert not an.in_domain and "no liver or kidneys in view" in an.reason, (an.reason, an.extra)


def test_segmentation_finds_liver_kidneys_and_aorta():
    from scanqc.training.abdomen_seg import code_map, dice_per_class

    from scanqc.checks import abdomen_seg

    vol, labels, _ = make_abdomen(np.random.default_rng(31), "portal_venous", variant="test", **COARSE)
    grid, probs = abdomen_seg.segment(vol)
    target = abdomen_seg.labels_to_grid(labels, vol, grid, code_map())
    cls = probs.argmax(0)
    # Dice on the 6 mm grid (a kidney is ~9 x 8 x 18 voxels there: its edge voxels weigh heavily).
    dice = dice_per_class(cls, target)
    assert dice["liver"] > 0.75 and dice["kidney"] > 0.45 and dice["spleen"] > 0.5, dice
    for organ in ("liver", "kidney"):
        c = abdomen_seg.CLASSES.index(organ)
        off = np.subtract(np.argwhere(cls == c).mean(0), np.argwhere(target == c).mean(0)) * grid.spacing
        assert np.linalg.norm(off) < 15.0, (organ, off)  # the liver is ~200 mm across
    # The aorta (16-28 mm across): centroid within 10 mm of the label's, slice by slice where both exist.
    a = abdomen_seg.CLASSES.index("aorta")
    both = [z for z in range(cls.shape[0]) if (cls[z] == a).any() and (target[z] == a).any()]
    assert len(both) >= 0.8 * int((target == a).any((1, 2)).sum())
    d = [np.linalg.norm(np.subtract(np.argwhere(cls[z] == a).mean(0), np.argwhere(target[z] == a).mean(0)))
         for z in both]
    assert np.median(d) * grid.spacing[1] < 10.0, d


def test_measured_aorta_hu_orders_the_phases_on_one_anatomy():
    from scanqc.datasets.abdomen import make_labels as labels_of

    rng = np.random.default_rng(12)
    labels, _, _ = labels_of(rng, COARSE["spacing"], z_range=(60.0, -330.0))
    got = {}
    for phase in PHASES:
        r = np.random.default_rng(5)
        hu, _ = bolus_hu(r, phase, time_s={"arterial": 35.0, "portal_venous": 70.0, "delayed": 300.0}.get(phase),
                         scale=None if phase == "non_contrast" else 1.0)
        img, _ = render(labels, hu, COARSE["spacing"], r, 3.0, 12.0, phase)
        an = locate(Volume(img, COARSE["spacing"], modality="CT"))
        got[phase] = (an.hu["aorta"], hu["aorta"])
        assert abs(an.hu["aorta"] - hu["aorta"]) < 35, (phase, an.hu, hu["aorta"])
    aorta = {p: v[0] for p, v in got.items()}
    assert aorta["arterial"] > aorta["portal_venous"] > aorta["delayed"] > aorta["non_contrast"], got


def test_head_sized_ct_is_outside_the_domain():
    rng = np.random.default_rng(0)
    arr = np.full((40, 80, 80), -1000.0, np.float32)
    _, yy, xx = np.mgrid[:40, :80, :80]
    arr[((yy - 40) ** 2 + (xx - 40) ** 2) < 30 ** 2] = 35.0  # 180 mm across at 3 mm
    arr += rng.normal(0, 5, arr.shape).astype(np.float32)
    an = locate(Volume(arr, (3.0, 3.0, 3.0), modality="CT"))
    assert not an.in_domain and "mm across" in an.reason


def _shipped() -> tuple[Path, dict]:
    rec = json.loads((MODELS / "promoted.json").read_text())
    versions = sorted((p for p in MODELS.iterdir() if (p / "metadata.json").is_file()
                       and json.loads((p / "metadata.json").read_text())["preprocessing"].get("mode") == "abdomen_hu"),
                      key=lambda p: [int(v) for v in p.name.split(".")])
    assert versions, f"no abdomen_hu contrast_phase model shipped (promoted: {rec['version']})"
    return versions[-1], json.loads((versions[-1] / "metadata.json").read_text())


def test_shipped_hu_classifier_onnx_matches_its_coefficients():
    from scanqc.inference import make_session

    folder, meta = _shipped()
    clf = meta["classifier"]
    n = len(clf["features"])
    named = meta["preprocessing"].get("features")
    if named:  # a model that names its features: each one this scanqc measures, in the ONNX input's order
        assert clf["features"] == named and set(named) <= set(FEATURES)
    else:  # older: a prefix this scanqc measures
        assert clf["features"] == list(FEATURES[:n]) and n in FEATURE_VERSIONS
    x = np.random.default_rng(0).normal(100, 60, (16, n)).astype(np.float32)
    xin = np.clip(x, np.float32(clf["clip"]["min"]), np.float32(clf["clip"]["max"])) if "clip" in clf else x
    z = (xin - np.array(clf["mean"])) / np.array(clf["std"])
    if "phase_mlp" in clf:  # averaged ReLU networks, side by side in one hidden layer
        m = clf["phase_mlp"]
        phase = np.maximum(z @ np.array(m["w1"]) + m["b1"], 0.0) @ np.array(m["w2"]) + m["b2"]
    else:
        phase = z @ np.array(clf["phase_coef"]).T + clf["phase_intercept"]
    ref = np.concatenate([phase, (z @ np.array(clf["suboptimal_coef"]) + clf["suboptimal_intercept"])[:, None]], 1)
    got = make_session(folder / "model.onnx", 1).run(None, {"image": x.reshape(16, 1, 1, 1, -1)})[0]
    assert np.abs(got - ref).max() < 1e-3


def test_contrast_phase_check_reports_measured_hu_on_a_dicom_series(tmp_path):
    from scanqc.models.registry import ModelRegistry

    from scanqc.io.dicom_write import write_dicom_series
    from scanqc.pipeline import check_path

    folder, _ = _shipped()
    vol, _, info = make_abdomen(np.random.default_rng(2), "arterial", scale=1.1, time_s=35.0, **COARSE)
    write_dicom_series(vol, tmp_path / "ct", "CT", header={"BodyPartExamined": "ABDOMEN", "PatientID": "SUBJ-0001"})
    reg = ModelRegistry(user_dir=tmp_path / "none")
    model = reg.find("contrast_phase", folder.name)
    (v,) = check_path(tmp_path / "ct", models={"contrast_phase": model, "coverage": reg.get("coverage"),
                                               "motion": reg.get("motion")})
    res = {c["name"] if "name" in c else k: c for k, c in _checks(v.to_dict()).items()}
    cp = res["contrast_phase"]
    assert cp["status"] in ("pass", "warn"), cp
    details = cp.get("details") or cp.get("extra") or cp
    assert details["predicted"] == "arterial"
    assert abs(details["measured_hu"]["aorta"] - info["hu"]["aorta"]) < 40
    assert "aorta" in cp["message"] and "HU" in cp["message"]


def _checks(d: dict) -> dict:
    checks = d["checks"]
    if isinstance(checks, list):
        return {c["name"]: c for c in checks}
    return checks


@pytest.mark.parametrize(("dome", "kidneys", "end"), [(40.0, 0.0, "inferior"), (0.0, 35.0, "superior")])
def test_an_organ_reaching_the_end_slice_warns_instead_of_passing(monkeypatch, dome, kidneys, end):
    # Too small a section in the end slice to count as cut, but the organ reaches it: coverage is not shown.
    from scanqc.checks.abdomen_anatomy import Anatomy
    from scanqc.checks.base import CheckContext

    anat = Anatomy(True, "", found={"liver": True, "kidneys": True}, dome_to_first_slice_mm=dome,
                   kidneys_to_last_slice_mm=kidneys)
    monkeypatch.setattr(abdomen_coverage, "locate", lambda vol, cache=None: anat)
    r = abdomen_coverage.abdominal_coverage(_series(Volume(np.zeros((20, 8, 8), np.float32), (5.0, 2.0, 2.0))),
                                            CheckContext())
    assert r.status == "warn" and r.extra["uncertain"] == [end] and r.extra["missing"] == []
    assert f"{end} end not verified" in r.message and r.action
    anat.dome_to_first_slice_mm, anat.kidneys_to_last_slice_mm = 40.0, 12.0
    assert abdomen_coverage.abdominal_coverage(_series(Volume(np.zeros((20, 8, 8), np.float32), (5.0, 2.0, 2.0))),
                                               CheckContext()).status == "pass"


@pytest.mark.parametrize("seed", [40, 47, 49])
def test_collecting_system_percentile_is_not_the_neighbouring_bone(seed):
    # Regression: the kidney neighbourhood's top percentile read the 12th rib and the spine (600-1000 HU) as
    # excreted contrast, so portal venous scans looked delayed. Without bone it is the renal tissue's, and the
    # delayed scan of the same anatomy (excretion) reads higher.
    pv = locate(make_abdomen(np.random.default_rng(seed), "portal_venous", **COARSE)[0])
    vol, _, info = make_abdomen(np.random.default_rng(seed), "delayed", **COARSE)
    de = locate(vol)
    assert pv.hu["kidney_p99"] > 700  # the contamination this guards against is present in these draws
    assert pv.hu["kidney_p99_soft"] < 260 and info["hu"]["collecting_system"] > 290
    assert de.hu["kidney_p99_soft"] > pv.hu["kidney_p99_soft"] + 40


def test_evaluate_scores_abdominal_coverage_as_the_check_serves_it(tmp_path):
    # `scanqc evaluate --task coverage` on CT rows: the geometry check's verdict, not the composite's CT delegate.
    from scanqc.datasets.generate import write_case
    from scanqc.datasets.manifest import ManifestRow, write_manifest
    from scanqc.models.evaluate import case_outputs, read_manifest
    from scanqc.models.registry import BUNDLED_DIR, ModelRegistry

    rows = []
    for i, (cov, seed) in enumerate((("inferior", 8), ("full", 5))):
        vol, _, _ = make_abdomen(np.random.default_rng(seed), "portal_venous", coverage=cov, cut_fraction=0.2,
                                 **({"margins_mm": (30.0, 13.0)} if cov == "full" else {}), **COARSE)
        path = write_case(vol, tmp_path, f"c{i}", "nifti", {"Modality": "CT"})
        rows.append(ManifestRow(f"c{i}", path, "CT", "coverage", cov, missing=[] if cov == "full" else [cov],
                                body_region="abdomen", split="test",
                                provenance={"generator": "test"}))
    write_manifest(rows, tmp_path / "manifest.csv")
    got = read_manifest(tmp_path / "manifest.csv", "coverage", "all")
    out = case_outputs(ModelRegistry.for_folder(BUNDLED_DIR).find("coverage", "2.1.0"), got)
    assert out[0] == {"missing_superior": 0.0, "missing_inferior": 1.0}
    assert out[1] == {"missing_superior": 0.0, "missing_inferior": 0.0}


def test_a_classifier_measures_with_the_network_it_was_fit_on():
    # Contrast phase 2.1.0 / 2.2.0 were fit on abdomen_seg 1.0.0's measurements (no localisation recorded): they
    # keep reading 1.0.0's features whatever network the coverage check localises with; 2.3.0 names 1.1.0.
    from scanqc.models.registry import ModelRegistry

    from scanqc.checks import abdomen_seg
    from scanqc.preprocessing import preprocess

    reg = ModelRegistry(bundled_dir=MODELS.parent, user_dir=MODELS.parent / "none")
    old = reg.find("contrast_phase", "2.1.0")
    assert old.spec.localisation == "" and old.spec.localisation_network == "1.0.0"
    vol = make_abdomen(np.random.default_rng(44), "delayed", **COARSE)[0]
    cache: dict = {}
    x = preprocess(vol, old.spec, "CT", cache)
    v10 = locate(vol, {}, "1.0.0")
    assert np.allclose(x.ravel(), v10.features()[:20])
    assert v10.hu["collecting_system"] is None  # 1.0.0 has no collecting-system class
    assert abdomen_seg.classes(abdomen_seg.network_dir("1.0.0")) == abdomen_seg.CLASSES
    new = [m for m in reg.versions("contrast_phase") if m.spec.localisation]
    for m in new:  # every classifier that names a network finds it bundled, with its classes
        d = abdomen_seg.network_dir(m.spec.localisation)
        assert abdomen_seg.available(d) and "collecting_system" in abdomen_seg.classes(d), m.version


@pytest.mark.parametrize("seed", [40, 47, 49])
def test_urine_in_the_collecting_system_is_segmented_and_excreted_contrast_is_not_read_as_urine(seed):
    # abdomen_seg 1.1.0 labels the renal collecting system. Urine (portal venous, 2-16 HU) is found and reads
    # far below the parenchyma; excreted contrast (delayed, > 250 HU here) never reads like urine (the network
    # calls it kidney; the kidneys' top percentile without bone sees it, as before).
    from scanqc.checks import abdomen_seg

    if not abdomen_seg.available(abdomen_seg.network_dir("1.1.0")):
        pytest.fail("abdomen_seg 1.1.0 is not bundled")
    got = {}
    for phase, t in (("portal_venous", 80.0), ("delayed", 240.0)):
        vol, _, info = make_abdomen(np.random.default_rng(seed), phase, time_s=t, scale=1.0, **COARSE)
        an = locate(vol, {}, "1.1.0")
        cs, k50 = an.hu["collecting_system"], an.hu["kidney_p50"]
        got[phase] = (cs, k50, info["hu"]["collecting_system"], an.hu["kidney_p99_soft"])
    pv, de = got["portal_venous"], got["delayed"]
    assert pv[2] < 20 and de[2] > 250, got  # the draws are what the test claims
    assert pv[0] is not None and pv[0] < 60 and pv[0] < pv[1] - 80, got  # urine found, dark
    assert de[0] is None or de[0] > de[1] - 80, got  # no urine-like reading when contrast is excreted
    assert de[3] > pv[3] + 60, got


def test_a_classifier_takes_the_features_it_names_and_a_name_this_scanqc_lacks_is_a_coded_error():
    from scanqc.checks.abdomen_anatomy import feature_input
    from scanqc.errors import ErrorCode, ScanQCError
    from scanqc.preprocessing import PreprocessSpec, preprocess

    vol = make_abdomen(np.random.default_rng(45), "portal_venous", **COARSE)[0]
    cache: dict = {}
    names = ("spleen", "aorta", "kidney_p50")  # any subset, any order
    spec = PreprocessSpec(shape=(1, 1, 3), mode="abdomen_hu", modalities=("CT",), features=names)
    x = preprocess(vol, spec, "CT", cache).ravel()
    full = locate(vol, cache, spec.localisation_network).features()
    assert np.array_equal(x, full[[FEATURES.index(n) for n in names]])
    with pytest.raises(ScanQCError) as e:
        feature_input(vol, ("aorta", "renal_vein"), cache)
    assert e.value.code == ErrorCode.BAD_MODEL and "renal_vein" in e.value.message
    with pytest.raises(ScanQCError, match="names 2 features for a shape of 3"):
        PreprocessSpec(shape=(1, 1, 3), mode="abdomen_hu", features=("aorta", "ivc"))


def test_a_classifier_whose_network_is_not_installed_is_skipped_not_fed_other_measurements(monkeypatch):
    # A model fit on abdomen_seg X's measurements gets X's or nothing: never the rules' or another network's.
    from scanqc.models.registry import InstalledModel

    from scanqc.checks import abdomen_seg
    from scanqc.errors import ErrorCode, ScanQCError

    meta = json.loads((MODELS / "2.3.0" / "metadata.json").read_text())
    meta["preprocessing"]["localisation"] = "9.9.9"
    model = InstalledModel("contrast_phase", "2.3.0", MODELS / "2.3.0", "user", meta)
    assert model.spec.localisation == "9.9.9"
    vol = make_abdomen(np.random.default_rng(46), "portal_venous", **COARSE)[0]
    monkeypatch.setattr(ContrastPhaseCheck, "model", lambda self, ctx: model)
    r = ContrastPhaseCheck()(_series(vol), CheckContext())
    assert r.status == "skipped" and "abdomen_seg 9.9.9 is not installed" in r.message, r.message
    with pytest.raises(ScanQCError) as e:
        locate(vol, {}, "9.9.9")
    assert e.value.code == ErrorCode.BAD_MODEL and not abdomen_seg.available(abdomen_seg.network_dir("9.9.9"))


def test_measurements_outside_a_clipping_classifiers_training_range_are_reported():
    from scanqc.checks.abdomen_anatomy import Anatomy
    from scanqc.checks.contrast_phase import _outside_training_range

    anat = Anatomy(True, "", hu={"aorta": 900.0, "liver": 60.0, "ivc": 80.0}, found={"kidneys": False})
    clf = {"features": ["aorta", "liver", "ivc"], "clip": {"min": [20.0, 20.0, 90.0], "max": [400.0, 200.0, 300.0]}}
    out = _outside_training_range(anat, clf)
    assert set(out) == {"aorta", "ivc"} and out["aorta"]["measured"] == 900.0 and out["ivc"]["trained_min"] == 90.0
    assert _outside_training_range(anat, {"features": ["aorta"]}) == {}  # a model that does not clip
