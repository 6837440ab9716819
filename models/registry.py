"""Installed model versions: bundled artifacts plus the user's own, and which one is promoted.

Layout (same for the bundled folder next to this file and for ``$SCANQC_MODELS_DIR``, default
``~/.local/share/scanqc/models``)::

    <root>/<task>/<version>/model.onnx       ONNX graph, metadata also in metadata_props
    <root>/<task>/<version>/metadata.json    MONAI-bundle-style metadata (see docs/models.md)
    <root>/<task>/promoted.json              {"version": ..., "source": "user"|"bundled", ...}

Resolution for a task: the user folder's ``promoted.json`` if present, else the bundled one. A
promoted version is looked up in the user folder first, then among the bundled versions. numpy and
onnxruntime only (no torch): this is loaded on the check path.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASK_OUTPUTS, TASKS, OnnxModel, postprocess
from scanqc.preprocessing import PreprocessSpec

BUNDLED_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = ("task", "version", "labels", "preprocessing", "network_data_format", "thresholds")
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def user_models_dir() -> Path:
    """Where ``scanqc export --install`` and ``scanqc models promote`` write (``$SCANQC_MODELS_DIR``)."""
    env = os.environ.get("SCANQC_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "scanqc" / "models"


def semver_key(version: str) -> tuple[int, int, int, str]:
    m = _SEMVER.match(version)
    if not m:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"model version {version!r} is not a semantic version (X.Y.Z)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), version


def read_metadata(folder: Path) -> dict[str, Any]:
    """Read and validate ``metadata.json``; ``BAD_MODEL`` quoting the bad value otherwise."""
    path = folder / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: metadata.json missing") from None
    except (OSError, ValueError) as exc:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: top level must be an object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: missing key(s) {missing}")
    if meta["task"] not in TASKS:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: task {meta['task']!r} not one of {list(TASKS)}")
    if list(meta["labels"]) != list(TASK_OUTPUTS[meta["task"]]):
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: labels {meta['labels']!r} differ from the "
                                               f"{meta['task']} output layout {list(TASK_OUTPUTS[meta['task']])}")
    semver_key(str(meta["version"]))
    PreprocessSpec.from_dict(meta["preprocessing"])
    if meta.get("postprocess") is not None:
        from scanqc.checks.brain_coverage import POSTPROCESS

        cut = (meta.get("geometry") or {}).get("cut_fraction")
        if meta["postprocess"] != POSTPROCESS or meta["task"] != "coverage":
            raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: postprocess {meta['postprocess']!r} unknown for "
                                                   f"{meta['task']} (known: coverage {POSTPROCESS!r})")
        values = list(cut.values()) if isinstance(cut, dict) and set(cut) == {"superior", "inferior"} else [cut]
        if not all(isinstance(v, (int, float)) and 0 < float(v) < 1 for v in values):
            raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: geometry.cut_fraction must be in (0, 1) (one, or per "
                                                   f"superior / inferior end), got {cut!r}")
    delegate = meta.get("delegate") or {}
    if not isinstance(delegate, dict) or not all(isinstance(v, str) and _SEMVER.match(v) for v in delegate.values()):
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: delegate must map a modality to a version, got {delegate!r}")
    return meta


@dataclass
class InstalledModel:
    """One model version on disk."""

    task: str
    version: str
    folder: Path
    source: str  # "bundled" | "user"
    metadata: dict[str, Any]
    _onnx: OnnxModel | None = field(default=None, repr=False)
    _delegates: dict[str, InstalledModel] | None = field(default=None, repr=False)

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.metadata["preprocessing"])

    @property
    def thresholds(self) -> dict[str, Any]:
        return dict(self.metadata.get("thresholds") or {})

    @property
    def calibration(self) -> dict[str, Any]:
        return dict(self.metadata.get("calibration") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.metadata.get("metrics") or {})

    @property
    def onnx(self) -> OnnxModel:
        if self._onnx is None:
            spec = self.spec
            self._onnx = OnnxModel(self.folder / "model.onnx", (spec.in_channels, *spec.shape))
        return self._onnx

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.onnx.run(batch)

    @property
    def geometric(self) -> bool:
        """Outputs a brain mask that :mod:`scanqc.checks.brain_coverage` turns into the coverage decision."""
        return self.metadata.get("postprocess") is not None

    def for_modality(self, modality: str) -> InstalledModel:
        """The model that judges ``modality``: the version named in ``metadata["delegate"]`` (coverage 2.1.0 hands
        abdominal CT to the coverage CNN 2.0.0), looked up next to this version, then among the bundled ones;
        else this model."""
        version = (self.metadata.get("delegate") or {}).get((modality or "").upper())
        if not version:
            return self
        if self._delegates is None:
            self._delegates = {}
        if version not in self._delegates:
            places = ((self.source, self.folder.parent / version), ("bundled", BUNDLED_DIR / self.task / version))
            for source, d in places:
                if (d / "metadata.json").is_file():
                    meta = read_metadata(d)
                    if meta["task"] != self.task or str(meta["version"]) != version or meta.get("delegate"):
                        raise ScanQCError(ErrorCode.BAD_MODEL, f"{d}: not a plain {self.task} {version} model")
                    self._delegates[version] = InstalledModel(self.task, version, d, source, meta)
                    break
            else:
                raise ScanQCError(ErrorCode.BAD_MODEL, f"{self.folder}: its {modality} delegate {self.task} "
                                                       f"{version} is installed neither next to it nor bundled")
        return self._delegates[version]

    def postprocess(self, logits: np.ndarray) -> list[dict[str, Any]]:
        if self.geometric:
            from scanqc.checks.brain_coverage import outputs_from_logits

            return outputs_from_logits(logits, self.metadata["geometry"])
        return postprocess(self.task, logits, self.calibration)

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        return {"task": self.task, "version": self.version, "source": self.source, "folder": str(self.folder),
                "validation": m.get("validation", {}), "test": m.get("test", {}),
                "figures": self.figure_sources(), "trained": (self.metadata.get("training") or {}).get("date")}

    def figure_sources(self) -> dict[str, str]:
        """Where each reported figure comes from, in words (``scanqc models list``)."""
        m = self.metrics
        val, test = m.get("validation") or {}, m.get("test") or {}
        out: dict[str, str] = {}
        if val:
            how = ("cross-fit: thresholds fitted on the other half" if "cross-fit" in str(val.get("estimate", ""))
                   else "in-sample: thresholds fitted on these cases (optimistic)")
            out["validation"] = f"training's validation split, n={val.get('n')}, {how}"
        if test:
            data = test.get("data") or ("synthetic (scanqc data generate)" if self.source == "bundled" else "unknown")
            kind = "bundled synthetic held-out set" if self.source == "bundled" and data.startswith("synthetic") \
                else f"your test set ({data})"
            out["test"] = f"{kind}: {test.get('manifest', '?')} [{test.get('split', '?')}], n={test.get('n')}"
        return out


class ModelRegistry:
    """Bundled and user model versions; sessions cached per (task, version)."""

    def __init__(self, bundled_dir: Path | None = None, user_dir: Path | None = None) -> None:
        self.bundled_dir = Path(bundled_dir) if bundled_dir else BUNDLED_DIR
        self.user_dir = Path(user_dir) if user_dir else user_models_dir()
        self._cache: dict[tuple[str, str, str], InstalledModel] = {}
        self._lock = threading.Lock()
        self._only: tuple[str, Path] | None = None

    @classmethod
    def for_folder(cls, folder: Path) -> ModelRegistry:
        """The models of one folder only (``scanqc evaluate --models DIR``), labelled ``bundled`` when it is
        the bundled folder and ``user`` otherwise."""
        folder = Path(folder)
        reg = cls(bundled_dir=folder, user_dir=folder)
        same = folder.resolve() == BUNDLED_DIR.resolve()
        reg._only = ("bundled" if same else "user", folder)
        return reg

    def _roots(self) -> list[tuple[str, Path]]:
        if self._only is not None:
            return [self._only]
        return [("user", self.user_dir), ("bundled", self.bundled_dir)]

    def _load(self, source: str, folder: Path) -> InstalledModel:
        key = (source, folder.parent.name, folder.name)
        with self._lock:
            if key not in self._cache:
                meta = read_metadata(folder)
                if str(meta["version"]) != folder.name or meta["task"] != folder.parent.name:
                    raise ScanQCError(ErrorCode.BAD_MODEL, f"{folder}: metadata says {meta['task']}/{meta['version']}"
                                                           f" but the folder is {folder.parent.name}/{folder.name}")
                self._cache[key] = InstalledModel(meta["task"], str(meta["version"]), folder, source, meta)
            return self._cache[key]

    def versions(self, task: str) -> list[InstalledModel]:
        """Every installed version of a task (user first on equal versions), oldest first."""
        out: list[InstalledModel] = []
        for source, root in self._roots():
            tdir = root / task
            if not tdir.is_dir():
                continue
            for d in sorted(tdir.iterdir()):
                if d.is_dir() and (d / "metadata.json").is_file() and _SEMVER.match(d.name):
                    out.append(self._load(source, d))
        return sorted(out, key=lambda m: semver_key(m.version)[:3])

    def find(self, task: str, version: str, source: str | None = None) -> InstalledModel:
        for src, root in self._roots():
            if source and src != source:
                continue
            d = root / task / version
            if (d / "metadata.json").is_file():
                return self._load(src, d)
        raise ScanQCError(ErrorCode.BAD_MODEL, f"no installed {task} model version {version!r} "
                                               f"(installed: {[m.version for m in self.versions(task)]})")

    def promoted_record(self, task: str) -> dict[str, Any] | None:
        for src, root in self._roots():
            p = root / task / "promoted.json"
            if p.is_file():
                try:
                    rec = json.loads(p.read_text())
                except (OSError, ValueError) as exc:
                    raise ScanQCError(ErrorCode.BAD_MODEL, f"{p}: unreadable ({exc})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("version"), str):
                    raise ScanQCError(ErrorCode.BAD_MODEL, f"{p}: needs a 'version' string, got {rec!r}")
                rec.setdefault("source", src)
                rec["record"] = str(p)
                return rec
        return None

    def get(self, task: str) -> InstalledModel | None:
        """The promoted model of a task, or None when none is installed."""
        if task not in TASKS:
            raise ScanQCError(ErrorCode.BAD_MODEL, f"unknown task {task!r} (known: {', '.join(TASKS)})")
        rec = self.promoted_record(task)
        if rec is None:
            return None
        return self.find(task, rec["version"], rec.get("source") if rec.get("source") in ("user", "bundled") else None)

    def promote(self, task: str, version: str, *, reason: str, comparison: dict[str, Any] | None = None,
                forced: bool = False) -> Path:
        """Record ``version`` as the promoted one in the user folder (the bundled folder stays read-only)."""
        model = self.find(task, version)
        previous = self.promoted_record(task)
        rec = {"task": task, "version": version, "source": model.source, "promoted_at": dt.datetime.now(
            dt.timezone.utc).isoformat(timespec="seconds"), "reason": reason, "forced": forced,
               "previous": previous.get("version") if previous else None, "comparison": comparison or {}}
        out = self.user_dir / task / "promoted.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        tmp.replace(out)
        return out


_default: ModelRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ModelRegistry:
    """The process-wide registry (bundled + ``$SCANQC_MODELS_DIR``), created once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelRegistry()
        return _default


def reset_default_registry() -> None:
    """Forget cached sessions (tests, or after a promotion in a long-running service)."""
    global _default
    with _default_lock:
        _default = None
