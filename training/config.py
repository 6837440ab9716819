"""Training configuration: per-task defaults, overridable from a YAML/JSON file and the command line."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASK_OUTPUTS
from scanqc.preprocessing import DEFAULT_SPECS, PreprocessSpec

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: Per-task defaults applied by :func:`load_config` (below a config file and the command line). Five
#: stride-2 stages leave a 2^3 map, so the dense head stays small (less over-fitting on a few hundred cases)
#: while keeping coarse position (superior vs inferior) for coverage.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "motion": {"channels": (8, 16, 32, 64, 64), "strides": (2, 2, 2, 2, 2), "epochs": 40, "patience": 10},
    "contrast_phase": {"channels": (8, 16, 32, 64, 64), "strides": (2, 2, 2, 2, 2), "epochs": 40, "patience": 10,
                       "dropout": 0.2, "weight_decay": 1e-3},
    # Coverage: 64 inner slices along superior-inferior so a 10 mm cut is >= 1-2 slices on a 400 mm CT.
    "coverage": {"channels": (8, 16, 32, 64, 64), "strides": (2, 2, 2, 2, 2), "epochs": 40, "patience": 10,
                 "preprocessing": {"shape": (72, 48, 48), "pad_slices": 4}, "yaw_degrees": 15.0,
                 "inplane_scale": (0.85, 1.2)},
}


@dataclass
class TrainConfig:
    task: str
    preprocessing: dict[str, Any] = field(default_factory=dict)  # PreprocessSpec fields
    channels: tuple[int, ...] = (8, 16, 32, 64)  # monai Classifier feature maps per stage
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    # "dense": MONAI Classifier's flatten + linear head (reads features by position on the last map);
    # "pool": global max + mean pooling of the last map, then linear (position-free readout: "is there, anywhere,
    # a feature that says X"), for cues whose place and size vary with anatomy (e.g. excreted contrast).
    head: str = "dense"
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6  # early stopping: epochs without validation improvement
    seed: int = 0
    workers: int = 2  # caching / loading workers
    val_fraction: float = 0.2  # used only when the manifest has no 'val' split
    augment: bool = True
    # MR only: random gamma and bias field on the raw volume before preprocessing (TorchIO RandomGamma /
    # RandomBiasField default ranges), drawn ``volume_augment_copies`` times per case when caching.
    volume_augment: bool = False
    volume_augment_copies: int = 3
    yaw_degrees: float = 0.0  # random rotation about the superior-inferior axis (label-preserving)
    # Random isotropic zoom of the model input (MONAI RandZoomd, keep_size): organ and body size vary more
    # between patients than a few hundred training cases show. (1, 1) = off; never for coverage (moves the ends).
    zoom_range: tuple[float, float] = (1.0, 1.0)
    # Auxiliary regression targets read from the manifest's provenance["hu"] (contrast phase: mean HU of named
    # structures, e.g. aorta, collecting_system), trained as extra outputs that the exported model drops. They
    # push the network to measure the structures that define a phase. Rows without them add no auxiliary loss.
    aux_hu: tuple[str, ...] = ()
    aux_weight: float = 0.5
    inplane_scale: tuple[float, float] = (1.0, 1.0)  # random scale of each in-plane axis (label-preserving)
    # Random smooth (elastic) deformation of the model input, applied to each training batch (torch, so it also
    # runs on the GPU): displacements up to ``elastic_voxels`` output-grid voxels on a ``elastic_grid``^3 control
    # grid (TorchIO RandomElasticDeformation: 7 control points, 7.5 mm, i.e. ~2 voxels of a 64^3 head grid).
    # Anatomy varies between patients in ways a few hundred cases drawn from one template do not show.
    # 0 = off; never for coverage (moves anatomy across the scan's ends).
    elastic_voxels: float = 0.0
    elastic_grid: int = 7
    # Motion: share of training inputs whose air is zero-filled (vendor background masking, exports that blank
    # the air): the background channel and the intensity outside the head+margin read 0, as
    # ``background_zeroed_neutral`` preprocessing gives such a scan. Label-preserving (the head is untouched).
    zero_air_prob: float = 0.0
    fail_specificity: float = 0.95  # thresholds chosen on validation data
    warn_specificity: float = 0.90
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N; checked before any data loads
    threads: int = 2  # torch.set_num_threads on CPU
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch that exceeds it (keeps best)
    # GPU only (ignored, and recorded as off, on CPU, so one recipe runs on both): mixed precision (bfloat16
    # where supported, else float16 with gradient scaling) and torch.compile of the training forward pass.
    amp: bool = False
    compile: bool = False
    # DataLoader worker processes for augmentation and batching (None: 0 on CPU, where the cores are busy
    # training; on CUDA min(8, cores / processes), with pinned memory, so the GPU is not kept waiting).
    loader_workers: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_OUTPUTS:
            raise ScanQCError(ErrorCode.USAGE, f"unknown task {self.task!r}; choose from {sorted(TASK_OUTPUTS)}")
        # Derived keys of the defaults would contradict a changed field (background_channel -> in_channels).
        base = {k: v for k, v in DEFAULT_SPECS[self.task].to_dict().items() if k not in PreprocessSpec.DERIVED_KEYS}
        base.update(self.preprocessing or {})
        try:
            self.preprocessing = PreprocessSpec.from_dict(base).to_dict()
        except ScanQCError as exc:  # in a training config these are the user's settings, not a model's
            raise ScanQCError(ErrorCode.USAGE, f"training config {exc.message}") from None
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        for name in ("zoom_range", "inplane_scale"):
            value = tuple(float(z) for z in getattr(self, name))
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ScanQCError(ErrorCode.USAGE, f"{name} must be (low, high) with 0 < low <= high, got {value}")
            setattr(self, name, value)
        self.aux_hu = tuple(str(a) for a in self.aux_hu)
        if self.head not in ("dense", "pool"):
            raise ScanQCError(ErrorCode.USAGE, f"head must be 'dense' or 'pool', got {self.head!r}")
        if self.elastic_voxels < 0 or self.elastic_grid < 2:
            raise ScanQCError(ErrorCode.USAGE, f"elastic_voxels must be >= 0 and elastic_grid >= 2, got "
                              f"{self.elastic_voxels}, {self.elastic_grid}")
        if not 0.0 <= float(self.zero_air_prob) <= 1.0:
            raise ScanQCError(ErrorCode.USAGE, f"zero_air_prob must be in [0, 1], got {self.zero_air_prob}")
        if self.zero_air_prob and not self.preprocessing.get("background_channel"):
            raise ScanQCError(ErrorCode.USAGE, "zero_air_prob needs the background channel (preprocessing "
                                               "background_channel: true)")
        # Augmentations that move anatomy between slices would carry it across the scan's ends (the coverage label).
        for name, off in (("zoom_range", (1.0, 1.0)), ("elastic_voxels", 0.0)):
            if self.task == "coverage" and getattr(self, name) != off:
                raise ScanQCError(ErrorCode.USAGE, f"{name} {getattr(self, name)} would move anatomy across the "
                                  f"scan's ends and change the coverage label; use {off} for coverage")
        self.device = str(self.device).strip().lower()
        if not _DEVICE.match(self.device):
            hint = " (did you mean 'cuda'?)" if self.device in ("gpu", "nvidia", "cuda0") else ""
            raise ScanQCError(ErrorCode.USAGE, f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N{hint}")
        if self.loader_workers is not None and int(self.loader_workers) < 0:
            raise ScanQCError(ErrorCode.USAGE, f"loader_workers must be >= 0, got {self.loader_workers}")
        if len(self.channels) != len(self.strides):
            raise ScanQCError(ErrorCode.USAGE, f"channels {self.channels} and strides {self.strides} differ in length")

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d


def load_config(task: str, path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Task defaults <- config file (YAML/JSON mapping) <- non-None command-line overrides."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ScanQCError(ErrorCode.NOT_FOUND, f"training config {p}: {exc}") from None
        data = (json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)) or {}
        if not isinstance(data, dict):
            raise ScanQCError(ErrorCode.USAGE, f"training config {p}: must be a mapping, got {type(data).__name__}")
    unknown = set(data) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ScanQCError(ErrorCode.USAGE, f"training config: unknown key(s) {sorted(unknown)}")
    merged: dict[str, Any] = dict(TASK_DEFAULTS.get(task, {}))
    merged.update(data)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    merged["task"] = task
    data = merged
    return TrainConfig(**data)
