"""Running the task models: onnxruntime sessions, calibration and task outputs (numpy only).

A model's raw outputs are logits (see :data:`TASK_OUTPUTS`). :func:`postprocess` turns them into
calibrated probabilities with the parameters stored in ``metadata.json``:

- multi-class heads: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks");
- binary quantities: Platt scaling ``sigmoid(a * logit(p) + b)`` (Platt 1999), fitted on the validation
  split with scikit-learn's ``LogisticRegression`` at training time and applied here in numpy.

No torch, no MONAI: this module is on the ``scanqc check`` path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError

PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
MOTION_LABELS = ("none", "mild", "severe")
COVERAGE_ENDS = ("superior", "inferior")

#: Raw output layout per task: names of the logits, in order.
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "motion": MOTION_LABELS,  # softmax over severity
    "contrast_phase": (*PHASES, "suboptimal"),  # softmax over 4 phases + one sigmoid logit for enhancement
    "coverage": tuple(f"missing_{e}" for e in COVERAGE_ENDS),  # two independent sigmoid logits
}
TASKS = tuple(TASK_OUTPUTS)


def _threads() -> int:
    env = os.environ.get("SCANQC_ORT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


def make_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with telemetry off and a bounded thread pool."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{path}: onnxruntime could not load the model ({exc})") from None


class OnnxModel:
    """One ONNX file, its session created lazily once and shared by threads."""

    def __init__(self, path: str | Path, input_shape: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.input_shape = tuple(input_shape) if input_shape else None  # [C, D, H, W]
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    if not self.path.is_file():
                        raise ScanQCError(ErrorCode.BAD_MODEL, f"model file not found: {self.path}")
                    self._session = make_session(self.path)
        return self._session

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 5 or (self.input_shape and tuple(batch.shape[1:]) != self.input_shape):
            want = ", ".join(map(str, self.input_shape or ()))
            raise ScanQCError(ErrorCode.BAD_MODEL, f"{self.path}: input batch shape {tuple(batch.shape)} does not "
                                                   f"match the model input [N, {want}]")
        sess = self.session
        return np.asarray(sess.run(None, {sess.get_inputs()[0].name: batch})[0], dtype=np.float32)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60, 60)))


def logit(p: np.ndarray | float, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def platt(x_logit: np.ndarray | float, params: dict[str, float] | None) -> np.ndarray:
    """Platt scaling of a logit; identity (plain sigmoid) without parameters."""
    if not params:
        return sigmoid(x_logit)
    return sigmoid(float(params["a"]) * np.asarray(x_logit, dtype=np.float64) + float(params["b"]))


def raw_scores(task: str, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Uncalibrated per-quantity logits (the inputs of calibration), shape [N] each."""
    logits = np.asarray(logits, dtype=np.float64)
    n_out = len(TASK_OUTPUTS[task])
    if logits.ndim != 2 or logits.shape[1] != n_out:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"{task} model returned shape {tuple(logits.shape)}, "
                                               f"expected [N, {n_out}] ({', '.join(TASK_OUTPUTS[task])})")
    if task == "motion":
        p = softmax(logits)
        return {"any": logit(1 - p[:, 0]), "severe": logit(p[:, 2])}
    if task == "contrast_phase":
        return {"suboptimal": logits[:, 4]}
    return {f"missing_{e}": logits[:, i] for i, e in enumerate(COVERAGE_ENDS)}


def postprocess(task: str, logits: np.ndarray, calibration: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Calibrated outputs per case.

    - motion: ``{"motion": P(any motion), "severe": P(severe), "probabilities": {none, mild, severe}}``
    - contrast_phase: ``{"probabilities": {phase: p}, "predicted": phase, "suboptimal": P(suboptimal)}``
    - coverage: ``{"missing_superior": p, "missing_inferior": p}``
    """
    cal = calibration or {}
    logits = np.asarray(logits, dtype=np.float64)
    raw = raw_scores(task, logits)
    out: list[dict[str, Any]] = []
    if task == "motion":
        probs = softmax(logits, cal.get("temperature", 1.0))
        p_any = platt(raw["any"], cal.get("any"))
        p_sev = platt(raw["severe"], cal.get("severe"))
        for i in range(len(logits)):
            out.append({"motion": float(p_any[i]), "severe": float(p_sev[i]),
                        "probabilities": {k: float(probs[i, j]) for j, k in enumerate(MOTION_LABELS)}})
    elif task == "contrast_phase":
        probs = softmax(logits[:, :4], cal.get("temperature", 1.0))
        sub = platt(raw["suboptimal"], cal.get("suboptimal"))
        for i in range(len(logits)):
            out.append({"probabilities": {k: float(probs[i, j]) for j, k in enumerate(PHASES)},
                        "predicted": PHASES[int(np.argmax(probs[i]))], "suboptimal": float(sub[i])})
    elif task == "coverage":
        cols = {k: platt(v, cal.get(k)) for k, v in raw.items()}
        for i in range(len(logits)):
            out.append({k: float(v[i]) for k, v in cols.items()})
    else:
        raise ScanQCError(ErrorCode.BAD_MODEL, f"unknown task {task!r} (known: {', '.join(TASKS)})")
    return out
