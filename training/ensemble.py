"""Seed/recipe ensembles: several trained runs of one task combined into one exportable network.

``scanqc ensemble --run A --run B --manifest M --out DIR`` averages the members' *probabilities* (softmax for a
class head, sigmoid for a yes/no head) and returns them as logits (log p, or log-odds), so the combined network
has exactly the outputs of one member: calibration, thresholds, ``scanqc export`` (one ONNX graph, parity
tested), serving and evaluation are unchanged. Averaging probabilities of independently trained networks reduces
the variance of their errors (Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty
estimation using deep ensembles"); the price is one forward pass per member (a few ms each in onnxruntime).

Calibration and decision thresholds are fitted again on validation cases that **no member trained on** (checked
against each member's own training rows: a case some member saw would make the ensemble look better than it is).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scanqc.models.evaluate import manifest_sha256
from scanqc.training.calibration import calibrate
from scanqc.training.config import TrainConfig
from scanqc.training.train import (
    build_net,
    library_versions,
    load_case,
    manifests_hash,
    read_rows,
    split_rows,
)
from torch import nn

from scanqc.errors import ErrorCode, ScanQCError

_EPS = 1e-6


class ProbabilityEnsemble(nn.Module):
    """Members' probabilities averaged per head, returned as logits with the members' output layout."""

    def __init__(self, members: list[nn.Module], task: str) -> None:
        super().__init__()
        if not members:
            raise ScanQCError(ErrorCode.USAGE, "an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]

        def softmax_mean(sl: slice) -> torch.Tensor:
            p = torch.stack([torch.softmax(o[:, sl], dim=1) for o in outs]).mean(0)
            return torch.log(p.clamp_min(_EPS))

        def sigmoid_mean(sl: slice) -> torch.Tensor:
            p = torch.stack([torch.sigmoid(o[:, sl]) for o in outs]).mean(0).clamp(_EPS, 1 - _EPS)
            return torch.log(p) - torch.log1p(-p)

        if self.task == "motion":  # none / mild / severe
            return softmax_mean(slice(0, None))
        if self.task == "contrast_phase":  # 4 phases + suboptimal enhancement
            return torch.cat([softmax_mean(slice(0, 4)), sigmoid_mean(slice(4, 5))], dim=1)
        return sigmoid_mean(slice(0, None))  # coverage: superior / inferior end missing


def load_run_net(run_dir: str | Path) -> tuple[nn.Module, TrainConfig]:
    """The network of a run folder (``scanqc train`` or ``scanqc ensemble``), in eval mode, and its config."""
    run_dir = Path(run_dir)
    try:
        ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ScanQCError(ErrorCode.USAGE, f"{run_dir}: no best.pt (run `scanqc train` first)") from None
    cfg = TrainConfig(**ckpt["config"])
    if "members" in ckpt:
        net: nn.Module = ProbabilityEnsemble([_member_net(TrainConfig(**m["config"]), m) for m in ckpt["members"]],
                                             cfg.task)
    else:
        net = _member_net(cfg, ckpt)
    return net.eval(), cfg


def build_ensemble(runs: list[str | Path], manifest: str | Path | list, out: str | Path,
                   command: str | None = None) -> dict[str, Any]:
    """Combine ``runs`` into ``out`` (``best.pt`` + ``train_summary.json``, as ``scanqc train`` writes them).

    ``manifest``: its ``val`` rows calibrate the ensemble and set its thresholds; none may be a training row of
    any member (``ScanQCError(USAGE)`` naming the overlap otherwise).
    """
    if len(runs) < 2:
        raise ScanQCError(ErrorCode.USAGE, f"an ensemble needs at least 2 runs, got {len(runs)}")
    summaries, members = [], []
    for run in runs:
        try:
            summaries.append(json.loads((Path(run) / "train_summary.json").read_text()))
        except FileNotFoundError:
            raise ScanQCError(ErrorCode.USAGE, f"{run}: no train_summary.json (run `scanqc train` first)") from None
        ckpt = torch.load(Path(run) / "best.pt", map_location="cpu", weights_only=True)
        if "members" in ckpt:
            raise ScanQCError(ErrorCode.USAGE, f"{run} is itself an ensemble; list its member runs instead")
        members.append(ckpt)
    cfgs = [TrainConfig(**s["config"]) for s in summaries]
    task, spec = cfgs[0].task, cfgs[0].spec
    for run, cfg in zip(runs, cfgs, strict=True):
        if cfg.task != task:
            raise ScanQCError(ErrorCode.USAGE, f"{run}: task {cfg.task!r} differs from {task!r}")
        if cfg.spec.to_dict() != spec.to_dict():
            raise ScanQCError(ErrorCode.USAGE, f"{run}: preprocessing {cfg.spec.to_dict()} differs from the first "
                                               f"run's {spec.to_dict()}; members must share one input")
    rows = read_rows(manifest, task)
    val = [r for r in rows if r.get("split") == "val"]
    if not val:
        raise ScanQCError(ErrorCode.USAGE, f"{manifest}: no 'val' rows to calibrate the ensemble on")
    val_paths = {r["path"] for r in val}  # absolute (read_manifest resolves them)
    for run, s, cfg in zip(runs, summaries, cfgs, strict=True):
        seen, _ = split_rows(read_rows(s["manifest"], task), cfg)
        overlap = val_paths & {r["path"] for r in seen}
        if overlap:
            raise ScanQCError(ErrorCode.USAGE, f"{run} trained on {len(overlap)} of the {len(val)} validation cases "
                                               f"(e.g. {sorted(overlap)[0]!r}); calibrate on cases no member saw")

    from scanqc.models.evaluate import encode_row
    from tqdm.auto import tqdm

    net = ProbabilityEnsemble([_member_net(c, m) for c, m in zip(cfgs, members, strict=True)], task).eval()
    logits, targets = [], []
    with torch.no_grad():  # chunks of 16: the whole validation set at once would hold every input in memory
        for i in tqdm(range(0, len(val), 16), desc=f"{task} ensemble validation", unit="x16"):
            chunk = val[i:i + 16]
            logits.append(net(torch.from_numpy(np.stack([load_case(r, spec) for r in chunk]))).numpy())
            targets.extend(encode_row(task, r) for r in chunk)
    cal, thr, val_metrics = calibrate(task, np.concatenate(logits), np.stack(targets), cfgs[0].fail_specificity,
                                      cfgs[0].warn_specificity)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfgs[0].to_dict(), "members": [{"config": c.to_dict(), "state_dict": m["state_dict"]}
                                                          for c, m in zip(cfgs, members, strict=True)]},
               out / "best.pt")
    summary = {
        "task": task, "config": cfgs[0].to_dict(), "seed": [s["seed"] for s in summaries],
        "best_epoch": [s["best_epoch"] for s in summaries], "epochs_run": [s["epochs_run"] for s in summaries],
        "calibration": cal, "thresholds": thr, "validation_metrics": val_metrics,
        "manifest": [str(Path(m).resolve()) for m in (manifest if isinstance(manifest, list) else [manifest])],
        "manifests": [{"path": str(Path(m).resolve()), "sha256": manifest_sha256(m)}
                      for m in (manifest if isinstance(manifest, list) else [manifest])],
        "cwd": os.getcwd(),
        "manifest_sha256": manifests_hash(manifest), "n_train": max(s["n_train"] for s in summaries),
        "n_val": len(val), "val_case_ids": [r.get("case_id", "") for r in val],
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "device": "cpu", "libraries": library_versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": float(sum(s.get("train_seconds") or 0.0 for s in summaries)),
        "ensemble": [{"run": str(run), "command": s["command"], "manifest": s["manifest"],
                      "manifest_sha256": s["manifest_sha256"], "seed": s["seed"], "best_epoch": s["best_epoch"],
                      "n_train": s["n_train"], "validation_metrics": s["validation_metrics"]}
                     for run, s in zip(runs, summaries, strict=True)],
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _member_net(cfg: TrainConfig, ckpt: dict[str, Any]) -> nn.Module:
    net = build_net(cfg)
    net.load_state_dict(ckpt["state_dict"])
    return net
