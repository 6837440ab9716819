"""The abdominal segmentation network's training path: targets line up with the image on the working grid, the
export writes schema-valid metadata and the ONNX graph matches torch on real inputs of another length, and the
shipped network matches its own recorded parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")


def test_working_grid_targets_match_the_image():
    from scanqc.training.abdomen_seg import draw_case

    from scanqc.checks.abdomen_seg import CLASSES, INPLANE

    c = draw_case(np.random.default_rng([7, 0]))
    img, tgt = c["image"].astype(np.float32), c["target"]
    assert img.shape == tgt.shape and img.shape[1:] == (INPLANE, INPLANE)
    med = {n: float(np.median(img[tgt == i])) for i, n in enumerate(CLASSES) if (tgt == i).sum() > 20}
    # Bone is bright, background mostly air, liver soft tissue; the liver lies on the patient's right (low columns).
    assert med["bone"] > 200 and med["background"] < -500 and -20 < med["liver"] < 250, med
    cols = {n: np.argwhere(tgt == CLASSES.index(n))[:, 2].mean() for n in ("liver", "spleen")}
    assert cols["liver"] < cols["spleen"], cols


def test_export_parity_on_another_length_and_valid_metadata(tmp_path: Path):
    from scanqc.training.abdomen_seg import build_net, draw_case, export
    from scanqc.training.export import validate_metadata

    from scanqc.checks.abdomen_seg import network_input
    from scanqc.inference import make_session

    torch.manual_seed(0)
    net = build_net()
    cases = [draw_case(np.random.default_rng([8, 0]))]
    folder = export(net, tmp_path / "abdomen_seg" / "1.0.0", "1.0.0", {"_parity": cases}, {"n": 0})
    meta = json.loads((folder / "metadata.json").read_text())
    validate_metadata(meta)
    assert meta["onnx"]["parity_max_abs_diff"] < 1e-3 and meta["onnx"]["bytes"] < 3_000_000
    x = network_input(cases[0]["image"].astype(np.float32)[:21])  # 21 slices -> padded to 24
    assert x.shape[2] == 24
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = make_session(folder / "model.onnx", 1).run(None, {"image": x})[0]
    assert np.abs(got - ref).max() < 1e-3


def test_shipped_network_is_small_and_records_parity():
    from scanqc.checks import abdomen_seg

    meta = json.loads((abdomen_seg.MODEL_DIR / "metadata.json").read_text())
    assert meta["labels"] == list(abdomen_seg.classes()) and meta["labels"][:8] == list(abdomen_seg.CLASSES)
    assert meta["onnx"]["parity_max_abs_diff"] < 1e-3 and (abdomen_seg.MODEL_DIR / "model.onnx").stat().st_size < 3e6
    assert meta["working_grid"]["grid_mm"] == abdomen_seg.GRID_MM and meta["working_grid"]["inplane"] == \
        abdomen_seg.INPLANE


def test_fine_tuning_starts_from_an_exported_bundle(tmp_path: Path):
    """--init: the weights read back from a bundle's ONNX graph (PReLU slopes renamed by the exporter) are the
    exported network's; a graph of another architecture is refused by name."""
    from scanqc.training.abdomen_seg import build_net, draw_case, export, load_weights

    from scanqc.checks.abdomen_seg import network_input

    case = draw_case(np.random.default_rng([8, 1]))
    torch.manual_seed(1)
    src = build_net()
    with torch.no_grad():  # PReLU slopes away from their 0.25 start, so a mix-up between them would show
        for m in src.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.6)
    folder = export(src, tmp_path / "abdomen_seg" / "9.0.0", "9.0.0", {"_parity": [case]}, {"n": 0})
    torch.manual_seed(2)
    dst = build_net()
    x = torch.from_numpy(network_input(case["image"].astype(np.float32)))
    src.eval()
    dst.eval()
    with torch.no_grad():
        assert (src(x) - dst(x)).abs().max() > 1e-2  # different before
        load_weights(dst, folder, case)
        dst.eval()
        assert (src(x) - dst(x)).abs().max() < 1e-5
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    small = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1))
    torch.onnx.export(small, (x,), str(tmp_path / "other.onnx"), dynamo=False, input_names=["image"])
    with pytest.raises(SystemExit, match="another architecture"):
        load_weights(build_net(), tmp_path / "other.onnx", case)
