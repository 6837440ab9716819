"""Tiny labeled manifests (tests/training/tinydata.py) and stub ONNX models (built without torch) for all tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from scanqc.inference import TASK_OUTPUTS
from scanqc.preprocessing import DEFAULT_SPECS, PreprocessSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from tinydata import tiny_manifests

SHAPE = [16, 16, 16]


def stub_onnx(path: Path, in_ch: int, n_out: int, seed: int) -> None:
    """Global average pool -> MatMul: a real ONNX graph whose logits depend on the input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(seed).normal(0, 4, (in_ch, n_out)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["N", in_ch, None, None, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def install_stubs(root: Path) -> Path:
    for i, task in enumerate(TASK_OUTPUTS):
        spec = DEFAULT_SPECS[task].to_dict()
        spec["shape"] = SHAPE
        if spec.get("pad_slices"):
            spec["pad_slices"] = 2
        d = root / task / "0.1.0"
        d.mkdir(parents=True)
        in_ch = PreprocessSpec.from_dict(spec).in_channels  # follows spec changes (e.g. motion's background map)
        stub_onnx(d / "model.onnx", in_ch, len(TASK_OUTPUTS[task]), seed=i)
        meta = {"task": task, "version": "0.1.0", "labels": list(TASK_OUTPUTS[task]), "preprocessing": spec,
                "network_data_format": {}, "thresholds": {"motion_warn": 0.5}, "metrics": {}}
        (d / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_manifests(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="session")
def stub_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_stubs(tmp_path_factory.mktemp("eval-models"))
