"""Training loop for the three task networks (MONAI, PyTorch).

``scanqc train --task T --manifest M --out DIR`` -> ``DIR/best.pt`` (best validation checkpoint),
``DIR/history.json`` (per-epoch metrics) and ``DIR/train_summary.json`` (config, seed, command,
manifest hash, library versions, calibration, thresholds, validation metrics), which ``scanqc export``
turns into a versioned ONNX artifact.

- Data: a MONAI ``CacheDataset`` whose deterministic transform is :func:`scanqc.preprocessing.preprocess`
  (the same function serving uses), followed by light random augmentation (left-right flips; MR
  intensity scaling). Targets: :func:`scanqc.models.evaluate.encode_row`.
- Network: ``monai.networks.nets.Classifier`` (strided residual units, batch norm, PReLU, dense head):
  ~0.1-0.4 M parameters, tens of ms per volume in onnxruntime on 2 CPU cores.
- Seeds fixed (``monai.utils.set_determinism``); CPU by default, CUDA when present; multi-GPU with
  ``torchrun --nproc_per_node=N -m scanqc.training.train ...`` (DistributedDataParallel, see docs/training.md).
- Early stopping on the task's primary validation metric (ties broken by validation loss).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scanqc.models.evaluate import (
    PRIMARY_METRIC,
    check_cases,
    encode_row,
    manifest_sha256,
    read_manifest,
    task_metrics,
)
from scanqc.training.calibration import calibrate
from scanqc.training.config import TrainConfig
from torch import nn

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASK_OUTPUTS, postprocess
from scanqc.preprocessing import PreprocessSpec, preprocess
from scanqc.volume import Volume


class WithAuxOutputs(nn.Module):
    """A network with ``n_main`` task logits followed by training-only auxiliary outputs.

    In train mode ``forward`` returns every output; in eval mode (validation, calibration, ONNX export) only
    the task logits, so an exported model has the same outputs with or without auxiliary targets.
    """

    def __init__(self, net: nn.Module, n_main: int) -> None:
        super().__init__()
        self.net, self.n_main = net, n_main

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if self.training else out[:, :self.n_main]


def random_elastic(x: torch.Tensor, max_voxels: float, grid: int = 7, generator: torch.Generator | None = None,
                   prob: float = 0.7) -> torch.Tensor:
    """Random smooth deformation of a batch ``[B, C, D, H, W]``, one field per sample shared by its channels.

    Control-point displacements uniform in ``[-max_voxels, max_voxels]`` per axis on a ``grid``^3 lattice,
    trilinearly upsampled (TorchIO ``RandomElasticDeformation`` uses cubic B-splines; trilinear keeps it one
    ``interpolate``), then ``grid_sample`` with border padding. Each sample is deformed with probability ``prob``.
    Training-only augmentation: the model input and ONNX export are unchanged.
    """
    import torch.nn.functional as F

    if max_voxels <= 0 or prob <= 0:
        return x
    pick = (torch.rand(x.shape[0], generator=generator) < prob).nonzero().flatten()
    disp = (torch.rand(x.shape[0], 3, grid, grid, grid, generator=generator) * 2 - 1) * max_voxels
    if not len(pick):
        return x
    sub, spatial, dev = x[pick.to(x.device)], x.shape[2:], x.device
    disp = F.interpolate(disp[pick].to(dev), size=tuple(spatial), mode="trilinear", align_corners=True)
    # voxels -> grid_sample's normalised [-1, 1] units (align_corners=True), last dim ordered (x, y, z)
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial], device=dev).view(1, 3, 1, 1, 1)
    base = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n, device=dev) for n in spatial], indexing="ij"))
    coords = (base.unsqueeze(0) + disp * scale).permute(0, 2, 3, 4, 1).flip(-1)
    out = x.clone()
    out[pick.to(dev)] = F.grid_sample(sub, coords.to(x.dtype), mode="bilinear", padding_mode="border",
                                      align_corners=True)
    return out


class GlobalPoolHead(nn.Module):
    """Global max and mean over the last feature map, concatenated, then a linear layer (``head: pool``)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x.amax(dim=(2, 3, 4)), x.mean(dim=(2, 3, 4))], dim=1))


def build_net(cfg: TrainConfig) -> nn.Module:
    from monai.networks.nets import Classifier

    spec = cfg.spec
    n_main = len(TASK_OUTPUTS[cfg.task])
    net = Classifier(in_shape=(spec.in_channels, *spec.shape), classes=n_main + len(cfg.aux_hu),
                     channels=cfg.channels, strides=cfg.strides, num_res_units=cfg.num_res_units,
                     act="PRELU", norm="BATCH", dropout=cfg.dropout)
    if cfg.head == "pool":
        net.final = GlobalPoolHead(cfg.channels[-1], n_main + len(cfg.aux_hu))
    return WithAuxOutputs(net, n_main) if cfg.aux_hu else net


def aux_targets(row: dict[str, str], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(values / 100 HU, known 0/1) of the auxiliary targets ``names`` from ``row["provenance"]["hu"]``."""
    if not names:  # the usual case: no provenance to parse
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    try:
        hu = json.loads(row.get("provenance") or "{}").get("hu") or {}
    except (ValueError, AttributeError):
        hu = {}
    vals = [hu.get(n) for n in names]
    known = np.array([isinstance(v, (int, float)) for v in vals], np.float32)
    return np.array([float(v) / 100.0 if k else 0.0 for v, k in zip(vals, known, strict=True)], np.float32), known


def library_versions() -> dict[str, str]:
    import monai
    import onnxruntime
    import scipy

    out = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "numpy": np.__version__, "scipy": scipy.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import onnx
        import sklearn

        out.update(onnx=onnx.__version__, scikit_learn=sklearn.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def load_volume(row: dict[str, str]) -> tuple[Volume, str]:
    """One manifest case -> (volume, modality), through the serving reader."""
    from scanqc.series import load_series

    series, _ = load_series(row["path"], modality_hint=(row.get("modality") or None))
    if not series or series[0].volume is None:
        raise ScanQCError(ErrorCode.UNREADABLE, f"{row['path']}: no volume (case {row.get('case_id')})")
    return series[0].volume, (row.get("modality") or series[0].modality or "")


def load_case(row: dict[str, str], spec: PreprocessSpec) -> np.ndarray:
    """One manifest case -> model input, through the serving reader and preprocessing."""
    vol, modality = load_volume(row)
    return preprocess(vol, spec, modality)


def random_gamma_bias(arr: np.ndarray, rng: np.random.RandomState, log_gamma: float = 0.3,
                      coefficients: float = 0.5, order: int = 3) -> np.ndarray:
    """MR intensity augmentation of a raw (non-negative) volume: gamma then a smooth bias field.

    Gamma as TorchIO ``RandomGamma`` (``x ** exp(U(-log_gamma, log_gamma))`` on intensities scaled to
    [0, 1], default 0.3); the bias field as TorchIO ``RandomBiasField`` (Sudre et al. 2017): ``exp`` of a
    polynomial of degree ``order`` in the normalised coordinates, coefficients ``U(-c, c)`` (default 0.5).
    """
    a = np.clip(np.asarray(arr, dtype=np.float32), 0.0, None)
    top = float(a.max()) or 1.0
    a = (a / top) ** float(np.exp(rng.uniform(-log_gamma, log_gamma))) * top
    grids = [np.linspace(-1, 1, n, dtype=np.float32) for n in a.shape]
    log_field = np.zeros(a.shape, np.float32)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                c = float(rng.uniform(-coefficients, coefficients))
                log_field += c * (grids[0][:, None, None] ** i) * (grids[1][None, :, None] ** j) \
                    * (grids[2][None, None, :] ** k)
    return (a * np.exp(log_field)).astype(np.float32)


def split_rows(rows: list[dict[str, str]], cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    if not val:  # no explicit validation split: hold out a seeded fraction of 'train'
        rng = np.random.default_rng(cfg.seed)
        idx = rng.permutation(len(train))
        n_val = max(1, round(cfg.val_fraction * len(train)))
        val = [train[i] for i in idx[:n_val]]
        train = [train[i] for i in idx[n_val:]]
    if not train or not val:
        raise ScanQCError(ErrorCode.USAGE, f"need training and validation cases, got {len(train)} / {len(val)}")
    return train, val


def _datasets(cfg: TrainConfig, train_rows: list[dict], val_rows: list[dict],
              progress: bool = True) -> tuple[Any, Any]:
    from monai.data import CacheDataset
    from monai.transforms import Compose, MapTransform, RandFlipd, RandomizableTransform, RandScaleIntensityd, RandZoomd

    spec = cfg.spec

    class PreprocessD(MapTransform):
        """Manifest row -> {"image": float32 [C, D, H, W], "target": float32 [k]} (scanqc preprocessing)."""

        def __init__(self) -> None:
            super().__init__(keys=["image"])

        def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
            aux, known = aux_targets(row, cfg.aux_hu)
            return {"image": load_case(row, spec), "target": encode_row(cfg.task, row),
                    "case_id": row.get("case_id", ""), "aux": aux, "aux_known": known}

    class RandShiftd(RandomizableTransform):
        """Cheap random translation by up to ``max_shift`` voxels per axis (edge-padded roll)."""

        def __init__(self, max_shift: int, prob: float) -> None:
            RandomizableTransform.__init__(self, prob)
            self.max_shift = max_shift

        def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
            self.randomize(None)
            if not self._do_transform:
                return d
            img = np.asarray(d["image"])
            shifts = self.R.randint(-self.max_shift, self.max_shift + 1, size=3)
            pad = [(0, 0)] + [(self.max_shift, self.max_shift)] * 3
            padded = np.pad(img, pad, mode="edge")
            sl = (slice(None), *(slice(self.max_shift + s, self.max_shift + s + n)
                                 for s, n in zip(shifts, img.shape[1:], strict=True)))
            return {**d, "image": np.ascontiguousarray(padded[sl])}

    class RandGammaBiasd(RandomizableTransform):
        """Intensity augmentation of channel 0 only (the mask channel stays 0/1): random gamma and a smooth
        multiplicative bias field (separable quadratic), covering the scanner / coil variation of MR."""

        def __init__(self, prob: float, log_gamma: float = 0.4, bias: float = 0.35) -> None:
            RandomizableTransform.__init__(self, prob)
            self.log_gamma, self.bias = log_gamma, bias

        def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
            self.randomize(None)
            if not self._do_transform:
                return d
            img = np.array(d["image"], dtype=np.float32, copy=True)
            c0 = np.clip(img[0], 0.0, None)
            c0 = c0 ** float(np.exp(self.R.uniform(-self.log_gamma, self.log_gamma)))
            field = np.ones_like(c0)
            for ax, n in enumerate(c0.shape):
                t = np.linspace(-1, 1, n, dtype=np.float32)
                a, b = self.R.uniform(-1, 1, 2) * self.bias / 3
                shape = [1, 1, 1]
                shape[ax] = n
                field = field * (1 + a * t + b * (t ** 2 - 1 / 3)).reshape(shape)
            img[0] = np.clip(c0 * field, spec.mr_clip[0], spec.mr_clip[1])
            return {**d, "image": img}

    class PreprocessCopiesD(MapTransform):
        """Manifest row -> {"copies": float16 [1 + K, C, D, H, W], "target"}: the clean input plus K copies
        whose raw MR volume went through :func:`random_gamma_bias` first (seeded per case, so the cache is
        reproducible). Preprocessing (~0.1-0.3 s per MR) runs once per copy at caching, not every epoch."""

        def __init__(self, copies: int) -> None:
            super().__init__(keys=["path"])
            self.copies = copies

        def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
            import zlib

            vol, modality = load_volume(row)
            rng = np.random.RandomState(zlib.crc32(f"{cfg.seed}:{row.get('case_id', row['path'])}".encode()))
            vols = [vol] + ([vol.with_array(random_gamma_bias(vol.array, rng)) for _ in range(self.copies)]
                            if modality.upper() == "MR" else [])
            return {"copies": np.stack([preprocess(v, spec, modality) for v in vols]).astype(np.float16),
                    "target": encode_row(cfg.task, row), "case_id": row.get("case_id", "")}

    class RandPickCopyD(RandomizableTransform):
        """One of the cached copies (the clean one with probability ``1 - prob``) -> {"image", ...}."""

        def __init__(self, prob: float) -> None:
            RandomizableTransform.__init__(self, prob)

        def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
            self.randomize(None)
            n = len(d["copies"])
            i = int(self.R.randint(1, n)) if self._do_transform and n > 1 else 0
            return {"image": d["copies"][i].astype(np.float32), "target": d["target"], "case_id": d["case_id"]}

    class RandInPlaneAffined(RandomizableTransform):
        """Rotation about the superior-inferior axis (yaw, up to ``max_deg``) and independent scaling of the
        two in-plane axes (``scale`` range) of the intensity channels.

        Every voxel keeps its slice, so what touches the first or last slice (the coverage label) is
        unchanged; the mask channel (constant in-plane) is left as it is. Outside the field of view is 0.
        """

        def __init__(self, max_deg: float, scale: tuple[float, float], prob: float, n_fixed: int = 0) -> None:
            RandomizableTransform.__init__(self, prob)
            self.max_deg, self.scale, self.n_fixed = max_deg, scale, n_fixed

        def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
            from scipy import ndimage

            self.randomize(None)
            if not self._do_transform:
                return d
            img = np.array(d["image"], dtype=np.float32, copy=True)
            n = img.shape[0] - self.n_fixed
            a = np.deg2rad(self.R.uniform(-self.max_deg, self.max_deg))
            zoom = self.R.uniform(*self.scale, size=2)
            # output (y, x) -> input: inverse of "scale by zoom, then rotate by a" about the slice centre
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            inv = np.eye(3)
            inv[1:, 1:] = np.diag(1 / zoom) @ rot.T
            centre = (np.array(img.shape[1:], float) - 1) / 2
            offset = centre - inv @ centre
            for c in range(n):
                img[c] = ndimage.affine_transform(img[c], inv, offset=offset, order=1, mode="constant", cval=0.0)
            return {**d, "image": img}

    class RandZeroAird(RandomizableTransform):
        """Zero-filled air (``zero_air_prob``): outside the head and its margin (where the background channel is
        non-zero) the intensity channel and the background channel read 0, as preprocessing reads a scan whose
        reconstruction blanked the air. The background channel is the last one."""

        def __call__(self, d: dict[str, Any]) -> dict[str, Any]:
            self.randomize(None)
            if not self._do_transform:
                return d
            img = np.array(d["image"], dtype=np.float32, copy=True)
            air = img[-1] != 0
            img[0][air] = 0.0
            img[-1] = 0.0
            return {**d, "image": img}

    def plain(d: dict[str, Any]) -> dict[str, Any]:
        """MONAI transforms may return MetaTensors, others ndarrays: collate plain tensors only."""
        img = d["image"]
        img = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(np.asarray(img))
        return {**d, "image": img.float().contiguous()}

    aug: list[Any] = []
    first: list[Any] = [PreprocessD()]
    if cfg.augment and cfg.volume_augment:
        first = [PreprocessCopiesD(cfg.volume_augment_copies), RandPickCopyD(prob=0.75)]
    if cfg.augment and cfg.zero_air_prob > 0:
        aug.append(RandZeroAird(prob=cfg.zero_air_prob))
    if cfg.augment:
        aug.append(RandFlipd(keys="image", prob=0.5, spatial_axis=2))  # left-right only: S-I matters
        if cfg.zoom_range != (1.0, 1.0):  # zero padding: air in CT windows, background in MR channels
            aug.append(RandZoomd(keys="image", prob=0.7, min_zoom=cfg.zoom_range[0], max_zoom=cfg.zoom_range[1],
                                 mode="trilinear", padding_mode="constant", keep_size=True))
        if cfg.task != "coverage":  # coverage: a shift would move anatomy into the padding -> wrong label
            aug.append(RandShiftd(max_shift=2, prob=0.5))
        if cfg.task == "motion":
            aug.append(RandScaleIntensityd(keys="image", factors=0.1, prob=0.5))
        if cfg.task == "coverage" or (cfg.task == "motion" and not cfg.volume_augment):
            aug.append(RandGammaBiasd(prob=0.7))
        if cfg.yaw_degrees > 0 or cfg.inplane_scale != (1.0, 1.0):
            aug.append(RandInPlaneAffined(cfg.yaw_degrees, cfg.inplane_scale, prob=0.7,
                                          n_fixed=1 if spec.pad_slices else 0))
    train_ds = CacheDataset(train_rows, Compose([*first, *aug, plain]), num_workers=cfg.workers,
                            progress=progress, copy_cache=False)
    val_ds = CacheDataset(val_rows, Compose([PreprocessD()]), num_workers=cfg.workers, progress=progress,
                          copy_cache=False)
    return train_ds, val_ds


def task_loss(task: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "motion":
        return nn.functional.cross_entropy(logits, target[:, 0].long())
    if task == "contrast_phase":
        ce = nn.functional.cross_entropy(logits[:, :4], target[:, 0].long())
        known = target[:, 2]
        bce = nn.functional.binary_cross_entropy_with_logits(logits[:, 4], target[:, 1], reduction="none")
        return ce + (bce * known).sum() / known.sum().clamp_min(1.0)
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def predict_logits(net: nn.Module, loader: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    ls, ts = [], []
    for batch in loader:
        ls.append(net(batch["image"].to(device)).float().cpu().numpy())
        ts.append(np.asarray(batch["target"]))
    return np.concatenate(ls), np.concatenate(ts)


def _is_better(m: dict[str, Any], loss: float, best: tuple[float, float] | None, task: str) -> bool:
    score = m.get(PRIMARY_METRIC[task]) or 0.0
    if best is None:
        return True
    return score > best[0] + 1e-4 or (abs(score - best[0]) <= 1e-4 and loss < best[1] - 1e-4)


def _manifests(manifest: str | Path | list[str | Path] | tuple[str | Path, ...]) -> list[Path]:
    return [Path(m) for m in manifest] if isinstance(manifest, (list, tuple)) else [Path(manifest)]


def read_rows(manifest: str | Path | list, task: str) -> list[dict[str, str]]:
    """Rows of one or several manifests (their splits kept), in the given order."""
    return [r for m in _manifests(manifest) for r in read_manifest(m, task, "all")]


def manifests_hash(manifest: str | Path | list) -> str:
    """SHA-256 of one manifest; for several, SHA-256 over their hashes joined in order."""
    import hashlib

    hashes = [manifest_sha256(m) for m in _manifests(manifest)]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256(":".join(hashes).encode()).hexdigest()


def train(cfg: TrainConfig, manifest: str | Path | list, out: str | Path, command: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train, keep the best validation checkpoint, calibrate, write the run folder; returns the summary.

    Before any case is read: the device (:func:`resolve_device`), the manifests' rows and every case path,
    label and modality (:func:`scanqc.models.evaluate.check_cases`), each a coded ``ScanQCError``.
    """
    from monai.utils import set_determinism

    out = Path(out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    # Everything a user can get wrong is checked before any case is read (minutes of caching otherwise).
    device = resolve_device(cfg.device, world, local)
    rows = read_rows(manifest, cfg.task)
    if not rows:
        names = ", ".join(str(m) for m in _manifests(manifest))
        raise ScanQCError(ErrorCode.USAGE, f"{names}: no rows for task {cfg.task!r}")
    train_rows, val_rows = split_rows(rows, cfg)
    check_cases(train_rows + val_rows, cfg.task)
    use_cuda = device.type == "cuda"
    amp_dtype = None
    if cfg.amp and use_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if rank == 0 and (cfg.amp or cfg.compile) and not use_cuda:
        print(f"note: {' and '.join(n for n, on in (('amp', cfg.amp), ('compile', cfg.compile)) if on)} "
              f"apply on CUDA only; training on {device} without", flush=True)
    loader_workers = cfg.loader_workers if cfg.loader_workers is not None else (
        min(8, max(1, (os.cpu_count() or 2) // world)) if use_cuda else 0)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, cfg.threads))
    set_determinism(seed=cfg.seed)
    created = not out.exists()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, manifest, out, command, progress, train_rows, val_rows, device, world, rank,
                      amp_dtype, loader_workers)
    except BaseException:
        if rank == 0 and created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def resolve_device(requested: str, world: int = 1, local_rank: int = 0) -> torch.device:
    """The device a run will really use (``auto``: CUDA when present; under torchrun ``cuda:LOCAL_RANK``).

    ``USAGE`` when the request cannot be met: CUDA asked of a CPU-only torch or a machine without a GPU, a
    device index that does not exist, or an explicit index under torchrun (each process takes its own).
    """
    req = str(requested).strip().lower()
    if req == "cpu":
        return torch.device("cpu")
    avail = torch.cuda.is_available()
    if req == "auto" and not avail:
        return torch.device("cpu")
    if req not in ("auto", "cuda") and not (req.startswith("cuda:") and req[5:].isdigit()):
        raise ScanQCError(ErrorCode.USAGE, f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    if not avail:
        why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
               else "torch sees no CUDA device")
        raise ScanQCError(ErrorCode.USAGE, f"--device {requested}: {why}; use --device cpu (or auto)")
    n = torch.cuda.device_count()
    if world > 1 and ":" in req:
        raise ScanQCError(ErrorCode.USAGE, f"--device {requested} under torchrun: each process uses "
                                           "cuda:LOCAL_RANK; give --device cuda or auto")
    idx = local_rank if world > 1 else (int(req[5:]) if ":" in req else 0)
    if idx >= n:
        raise ScanQCError(ErrorCode.USAGE, f"--device {requested}: cuda:{idx} does not exist ({n} CUDA device(s)"
                                           f"{'; start at most that many processes per node' if world > 1 else ''})")
    return torch.device(f"cuda:{idx}")


def _unwrap_transform_error(exc: BaseException) -> ScanQCError | None:
    """MONAI wraps an error raised inside a transform in ``RuntimeError: applying transform ...``."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ScanQCError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _train(cfg: TrainConfig, manifest: Any, out: Path, command: str | None, progress: bool,
           train_rows: list[dict], val_rows: list[dict], device: torch.device, world: int, rank: int,
           amp_dtype: torch.dtype | None, loader_workers: int) -> dict[str, Any]:
    from monai.data import DataLoader
    from tqdm.auto import tqdm

    use_cuda = device.type == "cuda"
    t0 = time.perf_counter()
    try:
        train_ds, val_ds = _datasets(cfg, train_rows, val_rows, progress and rank == 0)
    except RuntimeError as exc:
        inner = _unwrap_transform_error(exc)
        if inner is None:
            raise
        raise ScanQCError(inner.code, f"while caching cases: {inner.message}") from None
    load_s = time.perf_counter() - t0
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch augmentation; shuffling keeps its own stream
    loader = {"num_workers": loader_workers, "pin_memory": use_cuda, "persistent_workers": loader_workers > 0}
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                          generator=gen, drop_last=len(train_ds) > cfg.batch_size, **loader)
    val_dl = DataLoader(val_ds, batch_size=max(cfg.batch_size, 16), shuffle=False, **loader)

    net = build_net(cfg).to(device)
    n_main = len(TASK_OUTPUTS[cfg.task])
    model: nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if use_cuda else None)
    step_model = torch.compile(model) if cfg.compile and use_cuda else model
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_epoch, stale = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t_ep, losses = time.perf_counter(), []
        bar = tqdm(train_dl, desc=f"{cfg.task} epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not progress or rank != 0)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = torch.as_tensor(batch["target"]).float().to(device, non_blocking=True)
            if cfg.augment and cfg.elastic_voxels > 0:
                x = random_elastic(x, cfg.elastic_voxels, cfg.elastic_grid, generator=aug_gen)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = step_model(x)
            outputs = outputs.float()  # losses in float32 under mixed precision
            loss = task_loss(cfg.task, outputs[:, :n_main], y)
            if cfg.aux_hu and "aux" in batch:  # masked MSE on the structures' HU / 100
                a, k = (torch.as_tensor(batch[key]).float().to(device) for key in ("aux", "aux_known"))
                loss = loss + cfg.aux_weight * (((outputs[:, n_main:] - a) ** 2) * k).sum() / k.sum().clamp_min(1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        sched.step()
        logits, targets = predict_logits(net, val_dl, device)
        val_loss = float(task_loss(cfg.task, torch.from_numpy(logits), torch.from_numpy(targets).float()))
        m = task_metrics(cfg.task, targets, postprocess(cfg.task, logits, None))
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
               "val_" + PRIMARY_METRIC[cfg.task]: m.get(PRIMARY_METRIC[cfg.task]),
               "seconds": time.perf_counter() - t_ep}
        history.append(rec)
        improved = _is_better(m, val_loss, best, cfg.task)
        if improved:
            best = (m.get(PRIMARY_METRIC[cfg.task]) or 0.0, val_loss)
            best_epoch, stale = epoch, 0
            if rank == 0:
                torch.save({"state_dict": net.state_dict(), "config": cfg.to_dict(), "epoch": epoch}, out / "best.pt")
        else:
            stale += 1
        if rank == 0:
            print(json.dumps({**rec, "best": improved}), flush=True)
        over = cfg.max_minutes is not None and (time.perf_counter() - t0 - load_s) / 60 > cfg.max_minutes
        if over or (out / "STOP").exists():
            if rank == 0:
                print(f"stopping after epoch {epoch}: {'time budget' if over else 'STOP file'} (best {best_epoch})",
                      flush=True)
            break
        if stale >= cfg.patience:
            if rank == 0:
                print(f"early stopping after epoch {epoch} (best {best_epoch})", flush=True)
            break
    summary: dict[str, Any] = {}
    if rank == 0:
        ckpt = torch.load(out / "best.pt", map_location=device, weights_only=True)
        net.load_state_dict(ckpt["state_dict"])
        logits, targets = predict_logits(net, val_dl, device)
        cal, thr, val_metrics = calibrate(cfg.task, logits, targets, cfg.fail_specificity, cfg.warn_specificity)
        summary = {
            "task": cfg.task, "config": cfg.to_dict(), "seed": cfg.seed, "best_epoch": best_epoch,
            "epochs_run": len(history), "history": history, "calibration": cal, "thresholds": thr,
            "validation_metrics": val_metrics,
            "manifest": [str(m.resolve()) for m in _manifests(manifest)], "manifest_sha256": manifests_hash(manifest),
            # per manifest, and the folder paths are relative to (exported metadata records no absolute path)
            "manifests": [{"path": str(m.resolve()), "sha256": manifest_sha256(m)} for m in _manifests(manifest)],
            "cwd": os.getcwd(),
            "n_train": len(train_rows), "n_val": len(val_rows),
            "val_case_ids": [r.get("case_id", "") for r in val_rows],
            "command": command or " ".join(shlex.quote(a) for a in sys.argv),
            # what was really used (config.device is what was asked for)
            "device": str(device), "device_requested": cfg.device,
            "device_name": torch.cuda.get_device_name(device) if use_cuda else platform.processor() or "cpu",
            "world_size": world, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            "compiled": bool(cfg.compile and use_cuda), "loader_workers": loader_workers,
            "libraries": library_versions(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_seconds": load_s,
            "train_seconds": float(sum(h["seconds"] for h in history)),
        }
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun ... -m scanqc.training.train``: the same options as ``scanqc train``
    (it runs that command), so a recipe moves between one process and several by its launcher alone."""
    from scanqc.training.cli import app

    os.environ.setdefault("SCANQC_TRAIN_LAUNCHER", "python -m scanqc.training.train")
    app(args=["train", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m scanqc.training.train")


if __name__ == "__main__":
    main()
