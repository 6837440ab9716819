"""Task networks (scanqc.training.train.build_net): heads, and ONNX parity of each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scanqc.training.config import TrainConfig, load_config
from scanqc.training.export import _onnx_export
from scanqc.training.train import GlobalPoolHead, build_net

from scanqc.errors import ScanQCError
from scanqc.inference import OnnxModel

SMALL = {"preprocessing": {"shape": [16, 16, 16]}, "channels": [4, 8, 8], "strides": [2, 1, 1], "num_res_units": 1}


@pytest.mark.parametrize("head", ["dense", "pool"])
def test_heads_export_to_onnx_with_parity(head, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(task="contrast_phase", head=head, aux_hu=("aorta",), **SMALL)
    net = build_net(cfg).eval()  # eval: the auxiliary output is dropped
    x = torch.randn(3, cfg.spec.in_channels, 16, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    assert ref.shape == (3, 5)
    _onnx_export(net, x[:1], tmp_path / "m.onnx")
    got = OnnxModel(tmp_path / "m.onnx", (cfg.spec.in_channels, 16, 16, 16)).run(x.numpy())
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_pool_head_reads_features_wherever_they_are():
    # The same feature blob at two places gives the same output: the readout has no position.
    head = GlobalPoolHead(channels=2, classes=3)
    a, b = torch.zeros(1, 2, 6, 6, 6), torch.zeros(1, 2, 6, 6, 6)
    a[0, :, 1, 1, 1], b[0, :, 4, 3, 5] = 2.0, 2.0
    torch.testing.assert_close(head(a), head(b))
    assert not torch.allclose(head(a), head(torch.zeros(1, 2, 6, 6, 6)))


def test_head_is_checked():
    assert load_config("contrast_phase").head == "dense"
    with pytest.raises(ScanQCError, match="head must be 'dense' or 'pool', got 'avg'"):
        load_config("motion", head="avg")
