"""The contrast-phase HU classifier's training path: fit on measured features, export to ONNX with valid
MONAI-bundle metadata, and the serving registry loads what it wrote (the path a retrain takes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scanqc.training import abdomen_phase

from scanqc.checks.abdomen_anatomy import FEATURES
from scanqc.inference import PHASES


def _rows(n: int, seed: int) -> list[dict]:
    # Features that separate the phases the way the HU do (aorta / portal vein rise, then fall), with noise.
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        phase = PHASES[i % 4]
        level = {"non_contrast": 40.0, "arterial": 300.0, "portal_venous": 180.0, "delayed": 110.0}[phase]
        x = level + rng.normal(0, 15, len(FEATURES))
        x[1::2] = 60 + (i % 4) * 25 + rng.normal(0, 10, len(x[1::2]))
        rows.append({"phase": phase, "enhancement": "suboptimal" if i % 8 == 5 else "optimal",
                     "features": x.tolist(), "in_domain": True})
    return rows


def test_fit_export_writes_a_valid_bundle_the_registry_loads(tmp_path: Path) -> None:
    rows, val = _rows(80, 0), _rows(40, 1)
    clf = abdomen_phase.fit(rows)
    acc = abdomen_phase.accuracy(clf, val)
    assert acc["accuracy"] >= 0.9 and acc["n"] == 40
    info = {"command": "test", "_x": [r["features"] for r in rows]}
    folder = abdomen_phase.export(clf, tmp_path, "9.9.9", info, acc, "test export")
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["label_classes"] == "non_contrast, arterial, portal_venous, delayed, suboptimal"  # schema: a string
    assert meta["onnx"]["parity_max_abs_diff"] <= 1e-4 and meta["metrics"]["validation"]["n"] == 40

    from scanqc.models.registry import ModelRegistry

    model = ModelRegistry.for_folder(tmp_path).find("contrast_phase", "9.9.9")
    assert model.version == "9.9.9" and model.metadata["preprocessing"]["mode"] == "abdomen_hu"
