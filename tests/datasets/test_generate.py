from __future__ import annotations

import numpy as np
import pytest
from scanqc.datasets import generate
from scanqc.datasets.manifest import read_manifest

from scanqc.errors import ScanQCError
from scanqc.series import load_series


def _arrays(manifest):
    rows = read_manifest(manifest)
    return rows, [load_series(r.resolve(manifest.parent))[0][0].volume.array for r in rows]


@pytest.mark.parametrize("task", ["motion", "contrast_phase", "coverage"])
def test_generate_writes_labeled_cases(tmp_path, task):
    m = generate(task, 3, tmp_path / "a", seed=3)
    rows, arrays = _arrays(m)
    assert len(rows) == 3 and {r.task for r in rows} == {task}
    assert {r.split for r in rows} <= {"train", "val"} and any(r.split == "val" for r in rows)
    for r, a in zip(rows, arrays):
        assert r.provenance != "real" and r.provenance["seed"] == 3
        assert np.isfinite(a).all() and a.ndim == 3
        if task == "motion":
            assert r.modality == "MR" and r.body_region == "brain" and r.severity is not None
            assert (r.severity == 0) == (r.label == "none")
            art = r.provenance["artefact"]
            # The artefact-to-noise ratio is recorded for every moved case and is what its name says.
            assert ("artefact_to_noise" in art) == (r.label != "none")
            if r.label != "none":
                assert art["artefact_rms"] > 0 and art["artefact_to_noise"] >= art["min_artefact_to_noise"] == 0.3
                assert art["artefact_to_noise"] == pytest.approx(art["artefact_rms"] / r.provenance["rician_sigma"],
                                                                 rel=1e-3)
        if task == "contrast_phase":
            assert r.modality == "CT" and r.phase == r.label
        if task == "coverage":
            assert r.missing == ([] if r.label == "full" else [r.label])
    # Same seed, same data: re-run the first case's job on its own.
    from scanqc.datasets.generate import _one_case, plan

    label, split, kind = plan(task, 3, 3, "train", 0.2)[0]
    again = _one_case((task, 0, label, 3, "train", split, str(tmp_path / "b"), "nifti", kind, 0.3, "template",
                       "phantom"))
    assert again.provenance == rows[0].provenance and again.label == rows[0].label
    assert np.array_equal(load_series(again.resolve(tmp_path / "b"))[0][0].volume.array, arrays[0])


def test_buried_motion_is_redrawn_and_visible_motion_kept(monkeypatch):
    import importlib

    gen = importlib.import_module("scanqc.datasets.generate")  # the module; the package's `generate` is a function
    _motion_visible = gen._motion_visible

    # Seed 3000 (test variant), case 1 as "mild": the first draw is periodic ghosting at 0.12 noise sigma,
    # buried; the rule redraws it once, from an independent stream, to a rigid move at 0.52 sigma.
    _, _, kept = _motion_visible(1, "mild", 3000, "test", 0.0)
    first = kept["artefact"]
    assert first["artefact_to_noise"] < 0.3 and "redraws" not in first and first["min_artefact_to_noise"] == 0.0
    _, fields, prov = _motion_visible(1, "mild", 3000, "test", 0.3)
    art = prov["artefact"]
    assert art["redraws"] == 1 and art["artefact_to_noise"] >= 0.3 and fields["label"] == "mild"
    assert art["kind"] != first["kind"] or art["severity"] != first["severity"]
    # A threshold no draw can reach is a coded error naming the value, not an endless loop.
    monkeypatch.setattr(gen, "MAX_MOTION_DRAWS", 2)
    with pytest.raises(ScanQCError, match=r"artefact-to-noise 9\.5"):
        _motion_visible(1, "mild", 3000, "test", 9.5)


def test_min_artefact_to_noise_is_validated(tmp_path):
    with pytest.raises(ScanQCError, match=r"got -0\.1"):
        generate("motion", 1, tmp_path, min_artefact_to_noise=-0.1)


def test_workers_variant_and_dicom(tmp_path):
    m1 = generate("contrast_phase", 2, tmp_path / "w1", seed=1, variant="test", fmt="dicom")
    m2 = generate("contrast_phase", 2, tmp_path / "w2", seed=1, variant="test", fmt="dicom", workers=2)
    rows1, a1 = _arrays(m1)
    _, a2 = _arrays(m2)
    assert all(np.array_equal(a, b) for a, b in zip(a1, a2))
    assert {r.split for r in rows1} == {"test"}
    s = load_series(rows1[0].resolve(m1.parent))[0][0]
    assert s.get("Modality") == "CT" and s.get("BodyPartExamined") == "ABDOMEN" and float(s.get("KVP")) == 120
    assert s.get("SliceThickness") is not None
    if rows1[0].label != "non_contrast":
        assert s.get("ContrastBolusAgent")
    with pytest.raises(ScanQCError, match="'ultrasound'"):
        generate("ultrasound", 1, tmp_path / "x")


def test_early_portal_venous_scan_is_labelled_by_the_phase_it_shows():
    from scanqc.datasets.generate import _contrast_case, dicom_header

    seen = set()
    for seed in range(60):
        _, fields, info = _contrast_case(np.random.default_rng(seed), "portal_venous", "train", suboptimal_rate=1.0)
        kind = info["suboptimal"]["kind"]
        seen.add(kind)
        if kind == "mistimed_early":  # a late arterial image: aorta > 230 HU, liver < 100 HU
            assert info["hu"]["aorta"] > 200 and info["hu"]["liver"] < 100
            assert fields["label"] == fields["phase"] == "arterial" and fields["enhancement"] == ""
            assert info["intended_phase"] == "portal_venous"
            header = dicom_header(fields, info, "c0")  # the site meant portal venous
            assert "PORTAL VENOUS" in header["SeriesDescription"]
        else:
            assert fields["label"] == "portal_venous" and fields["enhancement"] == "suboptimal"
    assert seen == {"mistimed_early", "weak_bolus"}
