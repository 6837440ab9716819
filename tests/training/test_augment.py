"""MR volume augmentation (scanqc.training.train.random_gamma_bias) and the cached-copies training path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scanqc.training.config import TrainConfig, load_config
from scanqc.training.train import random_gamma_bias, train

sys.path.insert(0, str(Path(__file__).parent))
from tinydata import TINY_CONFIG
from tinydata import tiny_manifests as make_tiny_manifests


def test_random_gamma_bias_is_seeded_smooth_and_positive():
    arr = np.random.default_rng(0).uniform(10, 1000, (16, 20, 24)).astype(np.float32)
    a = random_gamma_bias(arr, np.random.RandomState(3))
    b = random_gamma_bias(arr, np.random.RandomState(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == arr.shape and a.dtype == np.float32 and a.min() >= 0
    assert not np.allclose(a, arr)
    # The bias field alone (no gamma) is a smooth cubic: its log ratio to the input changes little between
    # neighbours (and not at all along the noise of the input).
    c = random_gamma_bias(arr, np.random.RandomState(4), log_gamma=0.0)
    ratio = c / arr
    assert np.abs(np.diff(np.log(ratio), n=2, axis=2)).max() < 0.05
    np.testing.assert_allclose(random_gamma_bias(arr, np.random.RandomState(5), 0.0, 0.0), arr, rtol=1e-5)


def test_volume_augment_is_opt_in():
    # Off by default: over the noise it distorts the motion background channel (docs/training.md).
    assert not load_config("motion").volume_augment
    assert load_config("motion", volume_augment=True).volume_augment


def test_training_with_cached_augmented_copies(tmp_path):
    manifests = make_tiny_manifests(tmp_path / "data")
    cfg = TrainConfig(task="motion", epochs=1, volume_augment=True, volume_augment_copies=1, **TINY_CONFIG)
    summary = train(cfg, manifests["motion"], tmp_path / "run", command="pytest copies", progress=False)
    assert summary["config"]["volume_augment"] is True and (tmp_path / "run" / "best.pt").is_file()


def test_coverage_training_rotates_and_scales_in_plane_only(tmp_path):
    # Yaw and in-plane scaling keep every voxel in its slice: what touches the first/last slice (the label)
    # cannot change.
    from scanqc.training.train import _datasets

    cfg = TrainConfig(task="coverage", epochs=1, yaw_degrees=30.0, inplane_scale=(0.7, 1.4), **{
        **TINY_CONFIG, "preprocessing": {"shape": [16, 16, 16], "pad_slices": 2}})
    train_ds, _ = _datasets(cfg, [], [])
    yaw = next(t for t in train_ds.transform.transforms if type(t).__name__ == "RandInPlaneAffined")
    yaw.set_random_state(0)
    img = np.zeros((2, 16, 16, 16), np.float32)
    img[0, 2:6, 4:12, 6:10] = 1.0
    img[1, 2:14] = 1.0  # inside-scan mask
    out = None
    for _ in range(10):  # prob < 1: draw until it rotates
        out = yaw({"image": img, "target": np.zeros(2), "case_id": "c0"})["image"]
        if not np.array_equal(out, img):
            break
    assert out is not None and not np.array_equal(out[0], img[0])
    np.testing.assert_array_equal(out[1], img[1])
    per_slice = out[0].reshape(16, -1).max(1) > 0.01
    np.testing.assert_array_equal(per_slice, img[0].reshape(16, -1).max(1) > 0)


def test_zoom_is_opt_in_and_refused_for_coverage():
    import pytest
    from scanqc.training.train import _datasets

    from scanqc.errors import ScanQCError

    # Off by default: tried for contrast phase, held-out accuracy fell 0.91 -> 0.87 (docs/training.md).
    assert load_config("contrast_phase").zoom_range == (1.0, 1.0)
    cfg = load_config("contrast_phase", zoom_range=(0.75, 1.3))
    train_ds, _ = _datasets(cfg, [], [])
    zoom = next(t for t in train_ds.transform.transforms if type(t).__name__ == "RandZoomd")
    zoom.set_random_state(0)
    img = np.zeros((2, 24, 24, 24), np.float32)
    img[:, 8:16, 8:16, 8:16] = 1.0  # a 'kidney' in the middle
    sizes = set()
    for _ in range(20):
        out = np.asarray(zoom({"image": img})["image"])
        assert out.shape == img.shape and out.min() >= 0  # keep_size; zero (air) padding, no wrap-around
        sizes.add(int((out[0] > 0.5).sum()))
    assert min(sizes) < 512 < max(sizes)  # both smaller and larger organs are drawn
    with pytest.raises(ScanQCError, match="coverage"):
        load_config("coverage", zoom_range=(0.9, 1.1))
    with pytest.raises(ScanQCError, match=r"zoom_range must be .* got \(1.2, 0.8\)"):
        load_config("motion", zoom_range=(1.2, 0.8))


def test_auxiliary_hu_targets_train_and_are_dropped_on_export(tmp_path):
    # Training-only outputs: the loss sees HU targets from provenance, the exported ONNX model only the
    # task's 5 logits (torch/ORT parity is checked by export_run itself).
    import csv
    import json

    import onnxruntime as ort
    from scanqc.training.export import export_run
    from scanqc.training.train import aux_targets, build_net

    src = make_tiny_manifests(tmp_path / "data")["contrast_phase"]
    rows = list(csv.DictReader(src.open()))
    hu = {"non_contrast": 40.0, "arterial": 300.0, "portal_venous": 160.0, "delayed": 110.0}
    for i, r in enumerate(rows):  # the last row has no HU: it must add no auxiliary loss
        r["provenance"] = json.dumps({"hu": {"aorta": hu[r["label"]]}} if i < len(rows) - 1 else {})
    with src.open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert aux_targets(rows[0], ("aorta", "liver"))[1].tolist() == [1.0, 0.0]
    assert aux_targets(rows[-1], ("aorta",))[1].tolist() == [0.0]

    cfg = TrainConfig(task="contrast_phase", epochs=2, aux_hu=("aorta",), **TINY_CONFIG)
    net = build_net(cfg)
    x = torch.zeros(2, cfg.spec.in_channels, *cfg.spec.shape)
    assert net.train()(x).shape == (2, 6) and net.eval()(x).shape == (2, 5)
    summary = train(cfg, src, tmp_path / "run", command="pytest aux", progress=False)
    assert list(summary["config"]["aux_hu"]) == ["aorta"]
    folder = export_run(tmp_path / "run", "0.1.0", tmp_path / "models", changelog="aux")
    sess = ort.InferenceSession(str(folder / "model.onnx"))
    assert sess.get_outputs()[0].shape[-1] == 5


def test_random_elastic_moves_anatomy_smoothly_and_boundedly():
    from scanqc.training.train import random_elastic

    x = torch.zeros(4, 2, 24, 24, 24)
    x[:, :, 9:15, 9:15, 9:15] = 1.0  # an 'organ' in the middle, both channels
    a = random_elastic(x, 2.0, 5, generator=torch.Generator().manual_seed(1), prob=1.0)
    b = random_elastic(x, 2.0, 5, generator=torch.Generator().manual_seed(1), prob=1.0)
    torch.testing.assert_close(a, b)  # seeded
    assert a.shape == x.shape and not torch.equal(a, x)
    torch.testing.assert_close(a[:, 0], a[:, 1])  # one field per sample, shared by its channels
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))
    for i in range(4):
        com = lambda v: (grid * v).flatten(1).sum(1) / v.sum()  # noqa: E731
        assert float((com(a[i, 0]) - com(x[i, 0])).abs().max()) <= 2.0  # moved at most max_voxels
        assert 0.4 < float(a[i, 0].sum() / x[i, 0].sum()) < 2.5  # resized, not erased
    # A constant image stays constant (border padding invents nothing); off and prob 0 are the identity.
    ones = torch.ones(2, 1, 12, 12, 12)
    torch.testing.assert_close(random_elastic(ones, 3.0, 4, prob=1.0), ones)
    assert random_elastic(x, 0.0) is x
    torch.testing.assert_close(random_elastic(x, 2.0, 5, prob=0.0), x)


def test_elastic_is_opt_in_refused_for_coverage_and_trains(tmp_path):
    import pytest

    from scanqc.errors import ScanQCError

    assert load_config("motion").elastic_voxels == 0.0
    with pytest.raises(ScanQCError, match="coverage"):
        load_config("coverage", elastic_voxels=1.5)
    with pytest.raises(ScanQCError, match=r"elastic_voxels must be >= 0 .* got -1.0"):
        load_config("motion", elastic_voxels=-1.0)
    manifests = make_tiny_manifests(tmp_path / "data")
    cfg = TrainConfig(task="motion", epochs=1, elastic_voxels=1.5, elastic_grid=4, **TINY_CONFIG)
    summary = train(cfg, manifests["motion"], tmp_path / "run", command="pytest elastic", progress=False)
    assert summary["config"]["elastic_voxels"] == 1.5 and (tmp_path / "run" / "best.pt").is_file()
