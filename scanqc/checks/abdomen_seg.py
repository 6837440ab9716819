"""Abdominal CT segmentation on a coarse working grid: the one preprocessing for training and serving.

A small 3D U-Net (MONAI ``UNet``, trained by :mod:`scanqc.training.abdomen_seg` on domain-randomised label maps,
:mod:`scanqc.datasets.abdomen`) labels liver, spleen, kidneys, aorta, IVC, portal vein and bone on a
``GRID_MM`` isotropic grid of ``INPLANE`` x ``INPLANE`` voxels centred on the body. The measurements
(:mod:`scanqc.checks.abdomen_anatomy`) are taken on a finer *detail* grid (block means down to ~``DETAIL_MM``),
which the labels are mapped onto by nearest neighbour.

Grid (:func:`work_grid`): canonical orientation (axis 0 superior -> inferior), block means to the detail grid
(cheap: strided sums, no filtering of the 512^2 native array), then :func:`scanqc.preprocessing.resample_fit`
(anti-aliased linear) to the working grid, then an in-plane crop / air padding around the body's centroid.
Training runs the very same function on its rendered volumes, and maps the label maps with the same geometry
(:func:`labels_to_grid`).

numpy/scipy + onnxruntime only (runtime path).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

GRID_MM = 6.0
DETAIL_MM = 3.0
INPLANE = 64
Z_MULTIPLE = 8  # three stride-2 levels in the network
AIR_HU = -1000.0
#: HU windows of the input channels (soft tissue; wide, for bone and air).
WINDOWS: tuple[tuple[float, float], ...] = ((-200.0, 300.0), (-1000.0, 1000.0))
#: Classes of abdomen_seg 1.0.0; a network's own list is its metadata's ``labels`` (:func:`classes`): 1.1.0 adds
#: the renal collecting system (urine 2-16 HU in portal venous, excreted contrast 27-450 HU when delayed).
CLASSES: tuple[str, ...] = ("background", "liver", "spleen", "kidney", "aorta", "ivc", "portal_vein", "bone")
CLASSES_CS: tuple[str, ...] = (*CLASSES, "collecting_system")


def _bundled_root() -> Path:
    root = Path(__file__).resolve().parents[2] / "models" / "abdomen_seg"
    if not root.is_dir():  # installed package: models/ is scanqc.models
        import scanqc

        root = Path(scanqc.__file__).resolve().parent / "models" / "abdomen_seg"
    return root


ROOT = _bundled_root()


def _promoted_version(root: Path) -> str:
    """The network the checks localise with by default: ``promoted.json``'s version, else 1.0.0."""
    try:
        return str(json.loads((root / "promoted.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "1.0.0"


MODEL_DIR = ROOT / _promoted_version(ROOT)
# Development override (a freshly trained network in another folder).
MODEL_DIR = Path(os.environ.get("SCANQC_ABDOMEN_SEG_DIR") or MODEL_DIR)


def network_dir(version: str | None = None) -> Path:
    """Folder of abdomen_seg ``version``; empty / None or the default's own version: :data:`MODEL_DIR`.

    A contrast-phase classifier names the network its HU features were measured with
    (``preprocessing.localisation``): features of another network are not what it was fit on.
    """
    if not version or MODEL_DIR.name == version:
        return MODEL_DIR
    return ROOT / version


@dataclass
class WorkGrid:
    """One volume on the detail and working grids (canonical axes: S->I, A->P, R->L)."""

    detail: np.ndarray  # HU on the detail grid (block means of the native voxels)
    detail_spacing: tuple[float, float, float]
    image: np.ndarray  # HU on the working grid, cropped/padded in-plane to INPLANE x INPLANE
    spacing: tuple[float, float, float]  # working-grid spacing (mm; ~GRID_MM)
    full_shape: tuple[int, int, int]  # working grid before the in-plane crop
    offset: tuple[int, int]  # (row, col) of the crop's first voxel in the full working grid (may be < 0)
    native_extent_mm: float  # superior-inferior extent of the scan


def _geometry(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[tuple[int, int, int],
                                                                          tuple[int, int, int]]:
    from scanqc.preprocessing import BlockMeans

    ks = BlockMeans(DETAIL_MM).factors(shape, spacing)
    out = tuple(max(1, int(np.round(n * s / GRID_MM))) for n, s in zip(shape, spacing))
    return ks, out  # type: ignore[return-value]


def _centre(image: np.ndarray) -> tuple[int, int]:
    body = image > -500.0
    if not body.any():
        return image.shape[1] // 2, image.shape[2] // 2
    rows, cols = body.sum((0, 2)), body.sum((0, 1))
    return (int(np.round(np.average(np.arange(image.shape[1]), weights=rows))),
            int(np.round(np.average(np.arange(image.shape[2]), weights=cols))))


def _crop(arr: np.ndarray, offset: tuple[int, int], fill: float) -> np.ndarray:
    out = np.full((arr.shape[0], INPLANE, INPLANE), fill, arr.dtype)
    r0, c0 = offset
    sr = slice(max(r0, 0), min(r0 + INPLANE, arr.shape[1]))
    sc = slice(max(c0, 0), min(c0 + INPLANE, arr.shape[2]))
    if sr.stop > sr.start and sc.stop > sc.start:
        out[:, sr.start - r0:sr.stop - r0, sc.start - c0:sc.stop - c0] = arr[:, sr, sc]
    return out


def work_grid(volume: Volume, cache: dict | None = None) -> WorkGrid:
    """Volume (HU) -> :class:`WorkGrid`; cached per series under ``abdomen_seg.grid``."""
    from scanqc.preprocessing import block_mean, block_means_inplane, canonicalize, resample_fit

    if cache is not None and "abdomen_seg.grid" in cache:
        return cache["abdomen_seg.grid"]
    arr, spacing = canonicalize(volume)
    ks, out = _geometry(arr.shape, spacing)
    # In-plane block means slice by slice (made on arrival by the receiver and the folder reader when the
    # series cache has them), then along the slices: the same sums either way.
    detail = np.ascontiguousarray(block_mean(block_means_inplane(arr, ks[1:], cache), (ks[0], 1, 1)))
    dsp = tuple(float(arr.shape[i] * spacing[i] / detail.shape[i]) for i in range(3))
    full = resample_fit(detail, out, True, None)
    sp = tuple(float(arr.shape[i] * spacing[i] / out[i]) for i in range(3))
    cy, cx = _centre(full)
    offset = (cy - INPLANE // 2, cx - INPLANE // 2)
    g = WorkGrid(detail, dsp, _crop(full, offset, AIR_HU), sp, out, offset,  # type: ignore[arg-type]
                 float(arr.shape[0] * spacing[0]))
    if cache is not None:
        cache["abdomen_seg.grid"] = g
    return g


def labels_to_grid(labels: np.ndarray, volume: Volume, grid: WorkGrid, codes: dict[int, int]) -> np.ndarray:
    """A label map on ``volume``'s voxels -> class indices on ``grid``'s working grid (training targets).

    ``codes`` maps generator label codes to class indices (others: background; the class count is the largest
    index + 1). Each class's fraction is carried through the same block means, resampling and crop as the image;
    the largest fraction wins.
    """
    from scanqc.preprocessing import block_mean, canonicalize, resample_fit

    lv = Volume(labels, volume.spacing, volume.origin, volume.direction, modality="CT")
    lab, spacing = canonicalize(lv)
    ks, out = _geometry(lab.shape, spacing)
    n = max(codes.values()) + 1
    fr = np.zeros((n, *grid.image.shape), np.float32)
    cls = np.zeros(256, np.int64)
    for code, c in codes.items():
        cls[code] = c
    lab_c = cls[np.rint(np.asarray(lab)).astype(np.int64)]
    for c in range(1, n):
        m = (lab_c == c).astype(np.float32)
        if not m.any():
            continue
        fr[c] = _crop(resample_fit(block_mean(m, ks), out, True, None), grid.offset, 0.0)
    fr[0] = 1.0 - fr[1:].sum(0)
    return fr.argmax(0).astype(np.uint8)


def network_input(image: np.ndarray) -> np.ndarray:
    """Working-grid HU ``[Z, H, W]`` -> float32 ``[1, C, Z', H, W]``, Z padded with air to a multiple of 8."""
    z = image.shape[0]
    zp = -(-z // Z_MULTIPLE) * Z_MULTIPLE
    if zp != z:
        image = np.concatenate([image, np.full((zp - z, *image.shape[1:]), AIR_HU, np.float32)])
    chans = [np.clip((image - lo) / (hi - lo), 0.0, 1.0) for lo, hi in WINDOWS]
    return np.ascontiguousarray(np.stack(chans)[None], dtype=np.float32)


_SESSION: dict[str, Any] = {}
_LOCK = threading.Lock()


def available(model_dir: Path = MODEL_DIR) -> bool:
    return (model_dir / "model.onnx").is_file()


def session(model_dir: Path = MODEL_DIR) -> Any:
    from scanqc.inference import make_session

    key = str(model_dir)
    with _LOCK:
        if key not in _SESSION:
            if not available(model_dir):
                raise ScanQCError(ErrorCode.BAD_MODEL, f"abdominal segmentation model missing: {model_dir}/model.onnx")
            _SESSION[key] = make_session(model_dir / "model.onnx")
        return _SESSION[key]


_CLASSES: dict[str, tuple[str, ...]] = {}


def classes(model_dir: Path = MODEL_DIR) -> tuple[str, ...]:
    """The network's output classes (its metadata's ``labels``; 1.0.0's :data:`CLASSES` when it has none)."""
    key = str(model_dir)
    if key not in _CLASSES:
        try:
            labels = json.loads((model_dir / "metadata.json").read_text()).get("labels")
        except (OSError, ValueError):
            labels = None
        _CLASSES[key] = tuple(labels) if labels else CLASSES
    return _CLASSES[key]


def softmax(logits: np.ndarray) -> np.ndarray:
    # In place on one temporary (9 x 48 x 64 x 64 on a CT: the allocations cost as much as the exp).
    e = logits - logits.max(0, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(0, keepdims=True)
    return e


def segment(volume: Volume, cache: dict | None = None, model_dir: Path = MODEL_DIR) -> tuple[WorkGrid, np.ndarray]:
    """(grid, class probabilities ``[C, Z, H, W]`` on the working grid)."""
    g = work_grid(volume, cache)
    x = network_input(g.image)
    logits = session(model_dir).run(None, {"image": x})[0][0, :, :g.image.shape[0]]
    return g, softmax(np.asarray(logits, np.float32))  # softmax makes its own array: no copy first


def first_argmax(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(0)`` as uint8 (ties: the first class), channel by channel: numpy's argmax along the first
    axis of ``[C, Z, H, W]`` walks it with a stride and took 4x as long."""
    best = probs[0].copy()
    out = np.zeros(probs.shape[1:], np.uint8)
    for c in range(1, len(probs)):
        higher = probs[c] > best
        out[higher] = c
        np.maximum(best, probs[c], out=best)
    return out


def _detail_index(grid: WorkGrid) -> list[np.ndarray]:
    """Per axis, the index of each detail voxel's nearest working voxel in the class map padded by one voxel
    in-plane (outside the crop: that zero border)."""
    idx = []
    for ax in range(3):
        nd, nw = grid.detail.shape[ax], grid.full_shape[ax]
        j = np.minimum(((np.arange(nd) + 0.5) * nw / nd).astype(np.int64), nw - 1)
        if ax > 0:
            j = np.clip(j - grid.offset[ax - 1] + 1, 0, INPLANE + 1)
        idx.append(j)
    return idx


def _pad(classes: np.ndarray) -> np.ndarray:
    return np.pad(classes, ((0, 0), (1, 1), (1, 1)))  # index -1 / INPLANE -> the zero border


def to_detail(grid: WorkGrid, classes: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Working-grid class map (cropped) -> the detail grid, nearest neighbour (outside the crop: background);
    ``box``: only that part of the detail grid (the same values as ``to_detail(grid, classes)[box]``)."""
    idx = _detail_index(grid)
    if box is not None:
        idx = [j[b] for j, b in zip(idx, box)]
    # Axis by axis (np.take), the small axes first: cheaper than one 3D fancy index.
    return np.take(np.take(np.take(_pad(classes), idx[0], axis=0), idx[1], axis=1), idx[2], axis=2)


def detail_boxes(grid: WorkGrid, classes: np.ndarray, margin: int) -> dict[int, tuple[slice, ...]]:
    """Bounding box, ``margin`` voxels wider (from 0), of each class present in ``to_detail(grid, classes)``,
    found on the working grid: the working voxels some detail voxel shows, then the detail voxels showing the
    box's first and last. A pass over the detail grid per class cost a twentieth of the localisation."""
    from scipy import ndimage

    idx = _detail_index(grid)
    shown = [np.unique(j, return_inverse=True) for j in idx]
    sub = _pad(classes)[np.ix_(*(u for u, _ in shown))]
    out: dict[int, tuple[slice, ...]] = {}
    for c, sl in enumerate(ndimage.find_objects(sub), start=1):
        if sl is None:
            continue
        box = []
        for s, (_, rank) in zip(sl, shown):
            hit = np.flatnonzero((rank >= s.start) & (rank < s.stop))
            box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1))
        out[c] = tuple(box)
    return out
