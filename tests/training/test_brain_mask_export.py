"""The brain-mask exporter (coverage 2.1.0's recipe) end to end on a small untrained UNet: ONNX written, torch and
onnxruntime agree on real heads, the metadata passes the registry and the MONAI schema, and the check path reads it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_export_writes_a_parity_checked_schema_valid_coverage_model(tmp_path):
    from scanqc.models.registry import ModelRegistry
    from scanqc.training import brain_mask as bm
    from scanqc.training.export import validate_metadata

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    torch.save(bm.build_net().state_dict(), run / "net.pt")
    sel = {"threshold": {"superior": 0.06, "inferior": 0.025}, "accuracy_at_threshold": 1.0, "n": 3,
           "plateau": {"superior": [0.05, 0.07], "inferior": [0.02, 0.03]}, "by_end": {"full": 1.0},
           "dice_mean": 0.5, "end_fraction_percentiles": {}, "curve": {}, "cache": {}}
    (run / "select.json").write_text(json.dumps(sel))
    (run / "train_summary.json").write_text(json.dumps({"steps": 0}))
    dest = bm.export(run, tmp_path / "models", "2.1.0", command="test")
    meta = json.loads((dest / "metadata.json").read_text())
    validate_metadata(meta)
    assert meta["onnx"]["parity_max_abs_diff"] < 1e-4 and meta["onnx"]["parity_cases"] == 3
    m = ModelRegistry.for_folder(tmp_path / "models").find("coverage", "2.1.0")
    assert m.geometric and m.metadata["geometry"]["cut_fraction"] == sel["threshold"]
    x = np.zeros((1, 1, *m.spec.shape), np.float32)
    out = m.postprocess(m.run(x))[0]
    assert set(out) >= {"missing_superior", "missing_inferior"}
