"""Model registry: layout, promoted resolution (user over bundled), coded errors for bad artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scanqc.models.registry import ModelRegistry

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASK_OUTPUTS
from scanqc.preprocessing import DEFAULT_SPECS


def _onnx_model(path: Path, in_ch: int, n_out: int) -> None:
    """A real ONNX graph (global average pool -> Gemm) built without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((in_ch, n_out), np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["N", in_ch, None, None, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what onnxruntime >= 1.17 reads
    onnx.save(model, str(path))


def install(root: Path, task: str, version: str, promoted: bool = False, meta_over: dict | None = None) -> Path:
    spec = DEFAULT_SPECS[task]
    d = root / task / version
    d.mkdir(parents=True)
    _onnx_model(d / "model.onnx", spec.in_channels, len(TASK_OUTPUTS[task]))
    meta = {"task": task, "version": version, "labels": list(TASK_OUTPUTS[task]), "preprocessing": spec.to_dict(),
            "network_data_format": {}, "thresholds": {}, "metrics": {"test": {"accuracy": 0.5}}, **(meta_over or {})}
    (d / "metadata.json").write_text(json.dumps(meta))
    if promoted:
        (root / task / "promoted.json").write_text(json.dumps({"version": version}))
    return d


def test_user_promotion_takes_precedence(tmp_path):
    bundled, user = tmp_path / "b", tmp_path / "u"
    install(bundled, "coverage", "1.0.0", promoted=True)
    reg = ModelRegistry(bundled, user)
    assert reg.get("coverage").version == "1.0.0" and reg.get("coverage").source == "bundled"
    install(user, "coverage", "1.1.0")
    assert [m.version for m in reg.versions("coverage")] == ["1.0.0", "1.1.0"]
    reg.promote("coverage", "1.1.0", reason="test")
    m = reg.get("coverage")
    assert m.version == "1.1.0" and m.source == "user"
    x = np.zeros((2, *[m.spec.in_channels, *m.spec.shape]), np.float32)
    assert m.run(x).shape == (2, 2)
    assert set(m.postprocess(m.run(x))[0]) == {"missing_superior", "missing_inferior"}


def test_no_model_returns_none_and_unknown_task_errors(tmp_path):
    reg = ModelRegistry(tmp_path / "b", tmp_path / "u")
    assert reg.get("motion") is None
    with pytest.raises(ScanQCError, match="'sharpness'"):
        reg.get("sharpness")


@pytest.mark.parametrize(("over", "needle"), [
    ({"labels": ["a", "b"]}, "['a', 'b']"), ({"version": "v1"}, "'v1'"),
    ({"preprocessing": {"shape": [1, 2, 3]}}, "(1, 2, 3)"), ({"task": "nope"}, "'nope'"),
])
def test_bad_metadata_is_bad_model_quoting_the_value(tmp_path, over, needle):
    install(tmp_path / "b", "motion", "1.0.0", promoted=True, meta_over=over)
    with pytest.raises(ScanQCError) as e:
        ModelRegistry(tmp_path / "b", tmp_path / "u").get("motion")
    assert e.value.code == ErrorCode.BAD_MODEL and needle in e.value.message


def test_corrupt_onnx_is_bad_model(tmp_path):
    d = install(tmp_path / "b", "motion", "1.0.0", promoted=True)
    (d / "model.onnx").write_bytes(b"not onnx")
    m = ModelRegistry(tmp_path / "b", tmp_path / "u").get("motion")
    with pytest.raises(ScanQCError) as e:
        m.run(np.zeros((1, 1, 64, 64, 64), np.float32))
    assert e.value.code == ErrorCode.BAD_MODEL


def test_wrong_input_shape_is_refused(tmp_path):
    install(tmp_path / "b", "motion", "1.0.0", promoted=True)
    m = ModelRegistry(tmp_path / "b", tmp_path / "u").get("motion")
    with pytest.raises(ScanQCError, match=r"\(1, 1, 8, 8, 8\)"):
        m.run(np.zeros((1, 1, 8, 8, 8), np.float32))
