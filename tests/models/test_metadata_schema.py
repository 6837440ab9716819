"""Shipped and exported metadata.json against the MONAI bundle metadata schema (vendored, offline).

Issue 20 item 10: motion 1.1.0 said ``num_channels: 2`` but its ``channel_def`` named one channel, and
``label_classes`` was a list where the schema wants a string; nothing checked either.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.preprocessing import PreprocessSpec

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p.parent for p in MODELS.glob("*/*/metadata.json"))
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"  # training/schema/README.md


def test_vendored_schema_is_the_one_metadata_names():
    from scanqc.training.export import MONAI_SCHEMA, SCHEMA_FILE

    assert SCHEMA_FILE.is_file() and SCHEMA_FILE.name == MONAI_SCHEMA.rsplit("/", 1)[-1]
    schema = json.loads(SCHEMA_FILE.read_text())
    assert "network_data_format" in schema["required"] and schema["properties"]["label_classes"]["type"] == "string"


@pytest.mark.parametrize("folder", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_metadata_passes_the_monai_schema(folder: Path, tmp_path: Path):
    from monai.bundle import verify_metadata
    from scanqc.training.export import SCHEMA_FILE, validate_metadata

    meta = json.loads((folder / "metadata.json").read_text())
    validate_metadata(meta)  # jsonschema + the channel count
    # MONAI's own validator, offline: it downloads the schema only when `filepath` does not exist yet.
    verify_metadata(meta_file=str(folder / "metadata.json"), filepath=str(SCHEMA_FILE), create_dir=False,
                    hash_val=SCHEMA_SHA256, hash_type="sha256")
    spec = PreprocessSpec.from_dict(meta["preprocessing"])
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == spec.in_channels == len(image["channel_def"])
    assert list(image["channel_def"].values()) == spec.channel_names()
    out = meta["network_data_format"]["outputs"]["logits"]
    if meta.get("postprocess"):  # a brain mask (coverage 2.1.0); the labels are what the geometry makes of it
        assert out["format"] == "segmentation" and out["spatial_shape"] == list(spec.shape)
    else:
        assert list(out["channel_def"].values()) == meta["labels"]


@pytest.mark.parametrize("folder", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_onnx_metadata_props_repeat_metadata_json(folder: Path):
    import hashlib

    import onnx

    meta = json.loads((folder / "metadata.json").read_text())
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    props = {p.key: json.loads(p.value) if p.value[:1] in "[{" else p.value for p in model.metadata_props}
    for key in ("network_data_format", "training", "preprocessing", "metrics", "label_classes"):
        assert props[key] == meta[key], key
    data = (folder / "model.onnx").read_bytes()
    assert meta["onnx"]["sha256"] == hashlib.sha256(data).hexdigest() and meta["onnx"]["bytes"] == len(data)


def test_validate_metadata_rejects_what_the_old_exporter_wrote():
    from scanqc.training.export import validate_metadata

    meta = json.loads((MODELS / "motion" / "1.1.0" / "metadata.json").read_text())
    old = copy.deepcopy(meta)
    old["label_classes"] = list(meta["labels"])
    with pytest.raises(ScanQCError) as e:
        validate_metadata(old)
    assert e.value.code == ErrorCode.BAD_MODEL and "label_classes" in e.value.message
    short = copy.deepcopy(meta)
    short["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "MR percentile-normalised"}
    with pytest.raises(ScanQCError, match="num_channels 2 but channel_def names 1"):
        validate_metadata(short)
    missing = copy.deepcopy(meta)
    del missing["network_data_format"]["inputs"]["image"]["dtype"]
    with pytest.raises(ScanQCError, match="dtype"):
        validate_metadata(missing)
