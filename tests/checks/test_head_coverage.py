"""Brain coverage on whole heads: a tight but complete field of view passes, a cut fails.

Issue 19: 4 of 12 fully covered real heads with 6-8 mm of air above the scalp were failed as "vertex cut".
Heads from scanqc.datasets.head, written as DICOM and read back through check_path; once with the promoted
model (coverage 2.0.0, a whole-volume CNN) and once with coverage 2.1.0 (brain located, decided from geometry).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scanqc.datasets.coverage import CoverageParams, crop_coverage, end_touches
from scanqc.datasets.head import acquire_head, head_header
from scanqc.models.registry import ModelRegistry, default_registry

from scanqc.io.dicom_write import write_dicom_series
from scanqc.pipeline import check_path

SEEDS = (21, 22, 23)


def _coverage(vol, folder, prov, models=None):
    write_dicom_series(vol, folder, "MR", header={**head_header(prov), "PatientID": "SUBJ-0001"})
    (v,) = check_path(folder, models=models)
    return v.checks["coverage"]


@pytest.fixture
def geometric(tmp_path):
    """A registry whose promoted coverage model is the bundled 2.1.0 (the bundled record stays 2.0.0)."""
    user = tmp_path / "user-models"
    (user / "coverage").mkdir(parents=True)
    (user / "coverage" / "promoted.json").write_text(json.dumps({"version": "2.1.0", "source": "bundled"}))
    return ModelRegistry(user_dir=user)


# Coverage 2.0.0 fails the third of these tight-FOV heads (vertex flagged): a known miss, reported in
# docs/model-quality.md; strict, so the day a model gets it right this test says so. Expected only while 2.0.0
# is the promoted model (2.1.0 passes it: test_geometry_passes_a_5_mm_air_head_and_reports_the_distances).
_KNOWN_MISS = pytest.mark.xfail(default_registry().get("coverage").version == "2.0.0",
                                strict=True, reason="coverage 2.0.0 flags this 5 mm-air head as vertex cut")


@pytest.mark.parametrize("seed", [21, 22, pytest.param(23, marks=_KNOWN_MISS)])
def test_full_head_with_5_mm_of_air_above_the_scalp_passes(tmp_path, seed):
    vol, req, prov = acquire_head(np.random.default_rng(seed), superior_air_mm=5.0)
    assert end_touches(req, vol) == []
    c = _coverage(vol, tmp_path / "h", prov)
    assert c.status == "pass", c.to_dict()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_cut_vertex_fails_coverage_at_the_superior_end(tmp_path, seed):
    vol, req, prov = acquire_head(np.random.default_rng(seed), superior_air_mm=5.0)
    vol, req, _ = crop_coverage(vol, req, CoverageParams("superior", 20.0, 20.0, 0.2))
    assert end_touches(req, vol) == ["superior"]
    c = _coverage(vol, tmp_path / "h", prov)
    assert c.status == "fail" and c.extra["missing"] == ["superior"], c.to_dict()


@pytest.mark.parametrize("seed", SEEDS)
def test_geometry_passes_a_5_mm_air_head_and_reports_the_distances(tmp_path, seed, geometric):
    vol, _req, prov = acquire_head(np.random.default_rng(seed), superior_air_mm=5.0)
    c = _coverage(vol, tmp_path / "h", prov, geometric)
    assert c.status == "pass" and c.extra["method"] == "brain mask geometry", c.to_dict()
    d = c.extra["geometry"]["distance_mm"]
    # 5 mm of air plus scalp, skull and CSF (at least ~7 mm) above the brain; below it at least the 3 mm the
    # generator keeps (acquire_head never cuts the required brain), one grid slice of resolution.
    assert 5.0 < d["superior"] < 60.0 and d["inferior"] > 0.0, d
    assert "mm below the first slice" in c.message


@pytest.mark.parametrize(("seed", "end"), [(21, "superior"), (22, "inferior"), (23, "superior")])
def test_geometry_fails_a_cut_brain_and_names_the_end(tmp_path, seed, end, geometric):
    vol, req, prov = acquire_head(np.random.default_rng(seed), superior_air_mm=5.0)
    vol, req, _ = crop_coverage(vol, req, CoverageParams(end, 20.0, 20.0, 0.2))
    assert end_touches(req, vol) == [end]
    c = _coverage(vol, tmp_path / "h", prov, geometric)
    assert c.status == "fail" and c.extra["missing"] == [end], c.to_dict()
    assert c.extra["geometry"]["distance_mm"][end] == 0.0 and c.action and "repeat the series" in c.action
