"""Model checks (motion, contrast phase, coverage) on stub models: decisions, actions, skips, infer seam."""

from __future__ import annotations

import numpy as np
import pytest

from scanqc.checks.base import CheckContext
from scanqc.checks.contrast_phase import ContrastPhaseCheck
from scanqc.checks.coverage import CoverageCheck
from scanqc.checks.ml import infer_region, model_checks
from scanqc.checks.motion import MotionCheck
from scanqc.guideline import SeriesRule
from scanqc.inference import postprocess
from scanqc.preprocessing import PreprocessSpec
from scanqc.series import Series
from scanqc.volume import Volume


class StubModel:
    """Quacks like scanqc.models.InstalledModel with fixed logits."""

    def __init__(self, task: str, logits: list[float], thresholds: dict | None = None) -> None:
        self.task, self.version, self.logits = task, "9.9.9", np.array([logits], np.float32)
        self.spec = PreprocessSpec(shape=(8, 8, 8), modalities=("MR", "CT"))
        self.thresholds = thresholds or {}
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert batch.shape == (1, 1, 8, 8, 8)
        return self.logits

    def postprocess(self, logits: np.ndarray) -> list[dict]:
        return postprocess(self.task, logits, None)


def _series(modality: str, body: str | None = None, desc: str | None = None, shape=(16, 16, 16)) -> Series:
    vol = Volume(np.random.default_rng(0).normal(100, 10, shape).astype(np.float32), (10.0, 25.0, 25.0),
                 modality=modality)
    s = Series(input="x", series_uid="1.2", modality=modality, volume=vol, source="nifti")
    if body:
        s.sidecar["BodyPartExamined"] = body
    if desc:
        s.sidecar["SeriesDescription"] = desc
    return s


def test_pipeline_runs_the_three_model_checks():
    assert [c.name for c in model_checks()] == ["motion", "contrast_phase", "coverage"]


def test_motion_fail_warn_pass_with_actions():
    ctx = CheckContext(models={"motion": StubModel("motion", [0, 0, 6], {"severe_fail": 0.9, "motion_warn": 0.5})})
    r = MotionCheck()(_series("MR"), ctx)
    assert r.status == "fail" and r.action and r.score > 0.9
    ctx = CheckContext(models={"motion": StubModel("motion", [0, 3, 0], {"severe_fail": 0.9, "motion_warn": 0.5})})
    r = MotionCheck()(_series("MR"), ctx)
    assert r.status == "warn" and "repeat" in r.action
    ctx = CheckContext(models={"motion": StubModel("motion", [6, 0, 0], {"severe_fail": 0.9, "motion_warn": 0.5})})
    assert MotionCheck()(_series("MR"), ctx).status == "pass"


def test_motion_skips_ct_and_non_brain_with_reason():
    ctx = CheckContext(models={"motion": StubModel("motion", [0, 0, 6])})
    assert "MR" in MotionCheck()(_series("CT"), ctx).message
    r = MotionCheck()(_series("MR", body="KNEE"), ctx)
    assert r.status == "skipped" and "KNEE" in r.message


def test_no_model_installed_says_skipped():
    r = MotionCheck()(_series("MR"), CheckContext(models={}))
    assert r.status == "skipped" and "no motion model" in r.message


def test_thin_volume_is_skipped_not_scored():
    ctx = CheckContext(models={"coverage": StubModel("coverage", [0, 0])})
    r = CoverageCheck()(_series("MR", shape=(3, 64, 64)), ctx)
    assert r.status == "skipped" and "too thin" in r.message and r.score is None


def test_contrast_phase_reported_without_expectation_and_fails_against_one():
    model = StubModel("contrast_phase", [0, 5, 0, 0, -5], {"suboptimal_warn": 0.5})
    r = ContrastPhaseCheck()(_series("CT"), CheckContext(models={"contrast_phase": model}))
    assert r.status == "pass" and r.extra["predicted"] == "arterial"
    assert set(r.extra["probabilities"]) == {"non_contrast", "arterial", "portal_venous", "delayed"}
    rule = SeriesRule(id="pv", modality="CT", expected_phase="portal_venous")
    r = ContrastPhaseCheck()(_series("CT"), CheckContext(rule=rule, models={"contrast_phase": model}))
    assert r.status == "fail" and "too early" in r.action and "portal venous" in r.message


def test_contrast_phase_suboptimal_enhancement_warns():
    model = StubModel("contrast_phase", [0, 0, 5, 0, 4], {"suboptimal_warn": 0.5})
    r = ContrastPhaseCheck()(_series("CT", body="ABDOMEN"), CheckContext(models={"contrast_phase": model}))
    assert r.status == "warn" and "Suboptimal" in r.action


def test_contrast_phase_skips_head_ct():
    model = StubModel("contrast_phase", [5, 0, 0, 0, 0])
    r = ContrastPhaseCheck()(_series("CT", body="HEAD"), CheckContext(models={"contrast_phase": model}))
    assert r.status == "skipped" and "HEAD" in r.message


def test_coverage_names_the_missing_end_and_action():
    model = StubModel("coverage", [5, -5], {"missing_superior": {"warn": 0.3, "fail": 0.5},
                                             "missing_inferior": {"warn": 0.3, "fail": 0.5}})
    r = CoverageCheck()(_series("MR", body="BRAIN"), CheckContext(models={"coverage": model}))
    assert r.status == "fail" and r.extra["missing"] == ["superior"] and "vertex" in r.action
    r = CoverageCheck()(_series("CT"), CheckContext(models={"coverage": model}))
    assert r.extra["region"] == "liver_dome_to_kidneys" and "liver dome" in r.action


def test_coverage_rule_region_mismatching_modality_is_skipped():
    rule = SeriesRule(id="b", coverage="whole_brain")
    r = CoverageCheck()(_series("CT"), CheckContext(rule=rule, models={"coverage": StubModel("coverage", [0, 0])}))
    assert r.status == "skipped" and "whole_brain" in r.message


def test_infer_seam_replaces_local_session():
    model = StubModel("motion", [6, 0, 0])
    seen = []

    def infer(task: str, batch: np.ndarray) -> np.ndarray:
        seen.append((task, batch.shape))
        return np.array([[0, 0, 8]], np.float32)

    r = MotionCheck()(_series("MR"), CheckContext(models={"motion": model}, infer=infer))
    assert seen == [("motion", (1, 1, 8, 8, 8))] and model.calls == 0 and r.status == "fail"


@pytest.mark.parametrize(("modality", "body", "desc", "want"), [
    ("MR", None, None, "brain"), ("CT", None, None, "abdomen"), ("CT", "HEAD", None, "brain"),
    ("CT", None, "CT ABDOMEN PORTAL VENOUS", "abdomen"), ("MR", "KNEE", None, None),
])
def test_region_inference_from_header(modality, body, desc, want):
    assert infer_region(_series(modality, body, desc), CheckContext())[0] == want
