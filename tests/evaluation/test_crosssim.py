"""crosssim, the independent test-data generator: physical properties of what it writes (small grids, fast)."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from scanqc.datasets.manifest import read_manifest
from scanqc.evaluation.crosssim import abdomen as A
from scanqc.evaluation.crosssim import head as H
from scanqc.evaluation.crosssim import mr as MR
from scanqc.evaluation.crosssim.brain_case import (
    ANR_MILD_MIN,
    ANR_NONE_MAX,
    ASR_MILD_MAX,
    ASR_SEVERE_MIN,
    COVER_MIN_MM,
    make_mr_case,
)
from scanqc.evaluation.crosssim.ct_case import make_ct_case
from scanqc.evaluation.crosssim.dicomio import write_series
from scanqc.evaluation.crosssim.generate import generate
from scanqc.evaluation.crosssim.motion import artefact_to_noise
from scipy import ndimage
from typer.testing import CliRunner

from scanqc.cli import app
from scanqc.series import load_series

SMALL_MR = {"grid_mm": 2.5, "max_inplane": 72}
SMALL_CT = {"max_inplane": 96, "z_step_max": 5.0, "thickness": 5.0}


def _core_median(img: np.ndarray, labels: np.ndarray, lab: int, erode: int = 1) -> float | None:
    m = labels == lab
    if erode:
        m = ndimage.binary_erosion(m, iterations=erode)
    return float(np.median(img[m])) if m.sum() >= 20 else None


@pytest.mark.parametrize("sequence", ["T1_MPRAGE", "T2", "FLAIR", "PD"])
def test_mr_tissue_intensities_follow_the_sequence(sequence):
    case = make_mr_case(5, "coverage", "full", keep_arrays=True, sequence=sequence, plane="axial", acq="3D"
                        if sequence in ("T1_MPRAGE", "FLAIR") else "2D", brain_source="procedural",
                        grid_mm=2.0, max_inplane=96)
    img, labels = case.clean, np.rint(case.labels_acq).astype(int)
    wm = _core_median(img, labels, H.WM)
    assert wm and wm > 0
    ranges = MR.TISSUE_RANGES[sequence]
    checked = 0
    for lab in (H.GM, H.CSF, H.MUSCLE, H.VITREOUS, H.CWM):
        v = _core_median(img, labels, lab)
        if v is None:
            continue
        lo, hi = ranges[H.LABEL_NAMES[lab]]
        # bias field and partial volume move a tissue's median a little off its drawn value
        assert lo * 0.8 - 0.05 <= v / wm <= hi * 1.2 + 0.05, (H.LABEL_NAMES[lab], v / wm, (lo, hi))
        checked += 1
    assert checked >= 3
    gm, csf = _core_median(img, labels, H.GM, 0), _core_median(img, labels, H.CSF, 0)
    if sequence == "T1_MPRAGE":
        assert wm > gm > csf
    elif sequence == "T2":
        assert csf > gm > wm
    elif sequence == "FLAIR":
        assert gm > wm > csf
    else:
        assert gm > wm
    # header says what was simulated
    assert case.header["MRAcquisitionType"] == case.provenance["sequence"]["acq"]
    assert float(case.header["RepetitionTime"]) == pytest.approx(case.provenance["sequence"]["tr_ms"])
    assert case.provenance["sequence"]["sequence"] == sequence


@pytest.mark.parametrize(("pe_dir", "seed"), [("ROW", 38), ("COL", 38)])
def test_motion_ghosts_lie_along_the_phase_encode_direction_in_the_header(pe_dir, seed):
    case = make_mr_case(seed, "motion", "severe", keep_arrays=True, plane="axial", acq="2D", pe_dir=pe_dir,
                        **SMALL_MR)
    assert case.header["InPlanePhaseEncodingDirection"] == pe_dir
    diff = (case.corrupted - case.reference) ** 2
    head = ndimage.binary_dilation(case.head_mask, iterations=2)
    rows = np.nonzero(head.any(axis=(0, 2)))[0]
    cols = np.nonzero(head.any(axis=(0, 1)))[0]
    in_rows = np.zeros(head.shape[1], bool)
    in_rows[rows.min():rows.max() + 1] = True
    in_cols = np.zeros(head.shape[2], bool)
    in_cols[cols.min():cols.max() + 1] = True
    beside_along_x = in_rows[None, :, None] & ~in_cols[None, None, :] & ~head  # outside the head along x (ROW)
    beside_along_y = ~in_rows[None, :, None] & in_cols[None, None, :] & ~head  # outside along y (COL)
    assert beside_along_x.sum() > 50 and beside_along_y.sum() > 50
    e_x, e_y = float(diff[beside_along_x].mean()), float(diff[beside_along_y].mean())
    along_pe, along_fe = (e_x, e_y) if pe_dir == "ROW" else (e_y, e_x)
    assert along_pe > 5 * along_fe, (along_pe, along_fe)


@pytest.mark.parametrize(("label", "seed"), [("none", 41), ("mild", 42), ("severe", 43)])
def test_motion_label_is_the_visible_artefact(label, seed):
    case = make_mr_case(seed, "motion", label, keep_arrays=True, **SMALL_MR)
    anr = artefact_to_noise(case.corrupted, case.reference, case.head_mask, case.provenance["noise_sigma"])
    assert anr == pytest.approx(case.provenance["artefact_to_noise"], rel=1e-3, abs=1e-3)
    asr = anr * case.provenance["noise_sigma"] / case.provenance["brain_signal"]
    if label == "none":
        assert anr < ANR_NONE_MAX and case.severity == 0.0
    elif label == "mild":
        assert anr >= ANR_MILD_MIN and asr < ASR_MILD_MAX and 0.15 <= case.severity <= 0.4
        assert case.provenance["motion"]["events"]
    else:
        assert asr >= ASR_SEVERE_MIN and 0.6 <= case.severity <= 1.0


def _si_extent(case) -> tuple[int, int, int, float]:
    """(first index, last index, size) of the brain mask along the array axis carrying S-I, superior first."""
    ax, sgn = MR.si_axis(case.geom)
    m = case.brain_mask
    idx = np.nonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))[0]
    n = m.shape[ax]
    step = case.geom.spacing[ax]
    if sgn > 0:  # index grows superior: superior end = last index
        return n - 1 - idx.max(), idx.min(), n, step
    return idx.min(), n - 1 - idx.max(), n, step


@pytest.mark.parametrize(("label", "seed"), [("full", 51), ("superior", 52), ("inferior", 53)])
def test_brain_coverage_keeps_or_cuts_the_brain_at_the_labelled_end(label, seed):
    case = make_mr_case(seed, "coverage", label, keep_arrays=True, **SMALL_MR)
    sup_gap, inf_gap, _n, step = _si_extent(case)  # index steps between the brain and each end
    cov = case.provenance["coverage"]
    if label in ("full", "inferior"):
        assert cov["brain_to_superior_end_mm"] >= COVER_MIN_MM
        assert sup_gap * step >= COVER_MIN_MM - step  # brain clear of the superior end on the image itself
    if label in ("full", "superior"):
        assert cov["brain_to_inferior_end_mm"] >= COVER_MIN_MM
        assert inf_gap * step >= COVER_MIN_MM - step
    if label == "superior":
        assert cov["brain_to_superior_end_mm"] <= -COVER_MIN_MM and sup_gap == 0
    if label == "inferior":
        assert cov["brain_to_inferior_end_mm"] <= -COVER_MIN_MM and inf_gap == 0
    assert case.missing == ("" if label == "full" else label)


def test_tight_field_of_view_above_the_scalp_is_still_full():
    for seed in range(60, 90):  # the generator draws 3-8 mm of air above the scalp in ~40 % of full cases
        case = make_mr_case(seed, "coverage", "full", keep_arrays=True, **SMALL_MR)
        if case.provenance["coverage"]["scalp_to_superior_end_mm"] <= 8.0:
            break
    else:
        pytest.fail("no tight field of view drawn")
    cov = case.provenance["coverage"]
    assert 3.0 <= cov["scalp_to_superior_end_mm"] <= 8.5
    assert cov["brain_to_superior_end_mm"] > cov["scalp_to_superior_end_mm"]  # skull and scalp lie between
    assert case.label == "full"


@pytest.mark.parametrize(("label", "seed"), [("full", 61), ("superior", 62), ("inferior", 63)])
def test_abdomen_coverage_liver_dome_to_kidney_lower_poles(label, seed):
    case = make_ct_case(seed, "coverage", label, keep_arrays=True, **{**SMALL_CT, "thickness": 2.5})
    lab = case.labels  # slices ordered inferior -> superior (normal +z)
    liver_sl = np.nonzero((lab == A.LIVER).any(axis=(1, 2)))[0]
    kid_sl = np.nonzero(np.isin(lab, (A.KCOR, A.KMED, A.KSINUS, A.KCOL)).any(axis=(1, 2)))[0]
    n, thick = lab.shape[0], case.geom.spacing[0]
    cov = case.provenance["coverage"]
    if label == "superior":
        assert liver_sl.max() == n - 1 and cov["liver_dome_to_superior_end_mm"] <= -COVER_MIN_MM
    else:
        assert (n - 1 - liver_sl.max()) * thick >= cov["liver_dome_to_superior_end_mm"] - thick
        assert cov["liver_dome_to_superior_end_mm"] >= COVER_MIN_MM
    if label == "inferior":
        assert kid_sl.min() == 0 and cov["kidneys_to_inferior_end_mm"] <= -COVER_MIN_MM
    else:
        assert kid_sl.min() * thick >= cov["kidneys_to_inferior_end_mm"] - thick
        assert cov["kidneys_to_inferior_end_mm"] >= 10.0  # full abdomen: kidneys end >= 10 mm above the last slice
    assert case.missing == ("" if label == "full" else label)


def test_phase_table_hu_at_textbook_times():
    """Enhancement curves hit the shared HU table at the phases' nominal times (scale 1, mid baseline)."""
    table = {  # structure: (non_contrast, arterial, portal_venous, delayed) ranges, docs/hu-reference.md
        "aorta": [(35, 50), (250, 400), (150, 200), (90, 130)],
        "portal_vein": [(35, 50), (100, 160), (160, 200), (100, 130)],
        "ivc": [(35, 50), (50, 90), (120, 160), (100, 130)],
        "liver": [(50, 65), (65, 85), (100, 130), (85, 105)],
        "spleen": [(40, 50), (90, 140), (110, 130), (90, 110)],
        "renal_cortex": [(30, 40), (150, 200), (150, 180), (100, 150)],
        "renal_medulla": [(30, 40), (60, 90), (140, 170), (110, 150)],
    }
    for name, ranges in table.items():
        for t, (lo, hi) in zip((None, 35.0, 70.0, 240.0), ranges):
            assert lo <= A.expected_hu(name, t) <= hi, (name, t, A.expected_hu(name, t))


@pytest.mark.parametrize(("phase", "seed"), [("non_contrast", 71), ("arterial", 72), ("portal_venous", 73),
                                             ("delayed", 74)])
def test_ct_image_hu_per_structure_and_phase(phase, seed):
    case = make_ct_case(seed, "contrast_phase", phase, keep_arrays=True, **SMALL_CT)
    hu = case.provenance["contrast"]["hu"]
    for lab, name in ((A.LIVER, "liver"), (A.AORTA, "aorta"), (A.SPLEEN, "spleen"), (A.KCOR, "renal_cortex")):
        v = _core_median(case.clean, case.labels, lab, erode=1)
        if v is None:
            continue
        assert abs(v - hu[name]) < max(12.0, 0.08 * abs(hu[name])), (name, v, hu[name])
    con = case.provenance["contrast"]
    if phase == "non_contrast":
        assert con["t_after_injection_s"] is None and case.enhancement == "" and "ContrastBolusAgent" not in case.header
        assert hu["aorta"] < 60 and hu["collecting_system"] < 20
    else:
        lo, hi = A.PHASE_TIMES[phase]
        assert lo <= con["t_after_injection_s"] <= hi and case.header["ContrastBolusAgent"]
        struct, thr = A.SUBOPTIMAL[phase]
        assert case.enhancement == ("suboptimal" if hu[struct] < thr else "optimal")
    if phase == "arterial":
        assert hu["aorta"] > hu["portal_vein"] and hu["renal_cortex"] > hu["renal_medulla"] + 40
    if phase == "portal_venous":
        assert hu["portal_vein"] > hu["liver"] > A.expected_hu("liver", None) - 10
    # noise is there, correlated in-plane (kernel), and uncorrelated across slices
    noise = case.volume - case.clean
    assert 4.0 < float(noise.std()) < 40.0


def test_series_read_back_with_the_written_geometry(tmp_path):
    mr = make_mr_case(81, "coverage", "full", plane="sagittal", **SMALL_MR)
    ct = make_ct_case(82, "contrast_phase", "arterial", **SMALL_CT)
    for case, modality, signed in ((mr, "MR", True), (ct, "CT", False), (ct, "CT", True)):
        folder = tmp_path / f"{modality}{signed}"
        write_series(case.volume, case.geom, folder, modality, case.header, uid_seed=7, ct_signed=signed)
        series, _ = load_series(folder)
        assert len(series) == 1
        s = series[0]
        v = s.volume
        assert s.modality == modality and v.shape == case.volume.shape
        assert np.allclose(v.spacing, case.geom.spacing, atol=1e-3)
        # the reader's direction columns are (normal, column direction, row direction)
        assert np.allclose(v.direction[:, 0], case.geom.normal, atol=1e-4)
        assert np.allclose(v.direction[:, 1], case.geom.col_dir, atol=1e-4)
        assert np.allclose(v.direction[:, 2], case.geom.row_dir, atol=1e-4)
        assert np.allclose(v.origin, case.geom.origin, atol=1e-2)
        if modality == "CT":
            assert np.allclose(v.array, np.clip(np.rint(case.volume), -1024, 3071), atol=1.0)
        else:
            assert np.corrcoef(v.array.ravel(), case.volume.ravel())[0, 1] > 0.999
            assert s.get("InPlanePhaseEncodingDirection") in ("ROW", "COL")
            assert float(s.get("MagneticFieldStrength")) in (1.5, 3.0)


def test_manifest_validates_and_the_seed_reproduces(tmp_path):
    opts = {"mr": SMALL_MR, "ct": SMALL_CT}
    generate("coverage", 4, 3, tmp_path / "cov", options=opts, progress=False)
    rows = read_manifest(tmp_path / "cov" / "manifest.csv")
    assert [r.label for r in rows] == ["full", "superior", "inferior", "full"]
    assert [r.modality for r in rows] == ["MR", "MR", "MR", "CT"] and all(r.split == "test" for r in rows)
    assert [r.missing for r in rows][:3] in ([[], ["superior"], ["inferior"]], ["", "superior", "inferior"])
    for r in rows:
        prov = r.provenance if isinstance(r.provenance, dict) else json.loads(r.provenance)
        assert prov["generator"] == "crosssim" and prov["seed"] == 3 and "version" in prov
        assert {"coverage", "geometry"} <= set(prov) or {"coverage", "body"} <= set(prov)
        assert load_series(tmp_path / "cov" / r.case_id)[0][0].volume is not None
    a = generate("contrast_phase", 2, 5, tmp_path / "a", options=opts, progress=False)
    b = generate("contrast_phase", 2, 5, tmp_path / "b", options=opts, progress=False)
    assert a["labels"] == b["labels"] == {"non_contrast": 1, "arterial": 1}

    def digest(folder):
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*.dcm")):
            h.update(p.read_bytes())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    pa = [json.loads(r["provenance"]) for r in csv.DictReader((tmp_path / "a" / "manifest.csv").open())]
    pb = [json.loads(r["provenance"]) for r in csv.DictReader((tmp_path / "b" / "manifest.csv").open())]
    for x, y in zip(pa, pb):
        x.pop("seconds"), y.pop("seconds")
        assert x == y
    c = generate("contrast_phase", 2, 6, tmp_path / "c", options=opts, progress=False)
    assert c["n"] == 2 and digest(tmp_path / "c") != digest(tmp_path / "a")


def test_cli_generates_and_evaluate_without_manifest_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "crosssim", "--task", "contrast_phase", "--n", "1", "--seed", "2",
                                   "--out", str(tmp_path / "cs")])
    assert res.exit_code == 0, res.output
    rows = read_manifest(tmp_path / "cs" / "manifest.csv")
    assert len(rows) == 1 and rows[0].task == "contrast_phase" and rows[0].label == "non_contrast"
    series, _ = load_series(tmp_path / "cs" / rows[0].case_id)
    assert series[0].modality == "CT"
    res = CliRunner().invoke(app, ["evaluate", "crosssim", "--task", "bogus", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "USAGE" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--task", "motion"])
    assert res.exit_code == 2 and "USAGE" in res.output
