"""`scanqc` sub-commands owned by scanqc.training (heavy imports stay inside the commands).

Merged at top level: ``scanqc train``, ``scanqc ensemble``, ``scanqc export``, ``scanqc baseline``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _fail(exc: Exception) -> None:
    code = getattr(exc, "code", None)
    typer.echo(f"{getattr(code, 'value', 'ERROR')}: {getattr(exc, 'message', exc)}", err=True)
    raise typer.Exit(2)


@app.command("train")
def train_cmd(
    task: Annotated[str, typer.Option(help="motion | contrast_phase | coverage")],
    manifest: Annotated[list[Path], typer.Option(help="manifest.csv (or its folder) from `scanqc data generate`; "
                                                     "repeat to train on several")],
    out: Annotated[Path, typer.Option(help="run folder: best.pt, history.json, train_summary.json")],
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (early stopping may end sooner)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON overrides of the task defaults")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default 0)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA when present, default) | cpu | cuda | cuda:N; "
                                                    "checked before any data loads")] = None,
    workers: Annotated[int | None, typer.Option(help="threads for reading/preprocessing cases")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 on a busy shared machine)")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="training time budget; stops after the epoch "
                                                           "that exceeds it, keeping the best checkpoint")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="mixed precision on CUDA (bfloat16, else "
                                                                    "float16 + grad scaling); off on CPU")] = None,
    compile_net: Annotated[bool | None, typer.Option("--compile/--no-compile",
                                                     help="torch.compile the training forward on CUDA")] = None,
    loader_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes (default: 0 on CPU, "
                                                            "min(8, cores/processes) on CUDA)")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Train a task network on a manifest; keeps the best validation checkpoint and calibrates it.

    Several processes (CPU or GPUs): ``torchrun --nproc_per_node=N -m scanqc.training.train`` with the same options.
    """
    import os

    from scanqc.errors import ScanQCError

    try:
        from scanqc.training.config import load_config
        from scanqc.training.train import train

        cfg = load_config(task, config, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, device=device,
                          workers=workers, threads=threads, max_minutes=max_minutes, amp=amp, compile=compile_net,
                          loader_workers=loader_workers)
        launcher = os.environ.get("SCANQC_TRAIN_LAUNCHER", "scanqc")
        if os.environ.get("WORLD_SIZE", "1") != "1":
            launcher = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '?')} -m scanqc.training.train"
        args = sys.argv[1:]
        cmd = f"{launcher} " + " ".join(shlex.quote(a) for a in args)
        summary = train(cfg, manifest, out, command=cmd, progress=not no_progress)
    except ScanQCError as exc:
        _fail(exc)
    if not summary:  # torchrun: only rank 0 evaluates and writes the run folder
        return
    typer.echo(json.dumps({"out": str(out), "best_epoch": summary.get("best_epoch"),
                           "validation": summary.get("validation_metrics")}, default=str))


@app.command("ensemble")
def ensemble_cmd(
    run: Annotated[list[Path], typer.Option(help="run folder from `scanqc train`; repeat for each member (>= 2)")],
    manifest: Annotated[list[Path], typer.Option(help="manifest(s) whose 'val' rows (seen by no member) "
                                                     "calibrate the ensemble")],
    out: Annotated[Path, typer.Option(help="run folder for the ensemble (then `scanqc export --run OUT`)")],
) -> None:
    """Combine trained runs of one task: probabilities averaged, calibrated and thresholded again on validation."""
    from scanqc.errors import ScanQCError

    try:
        from scanqc.training.ensemble import build_ensemble

        cmd = "scanqc " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        summary = build_ensemble(list(run), list(manifest), out, command=cmd)
    except ScanQCError as exc:
        _fail(exc)
    typer.echo(json.dumps({"out": str(out), "members": len(summary["ensemble"]),
                           "validation": summary["validation_metrics"]}, default=str))


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Option(help="run folder written by `scanqc train`")],
    version: Annotated[str, typer.Option(help="semantic version X.Y.Z of the new artifact")],
    out: Annotated[Path | None, typer.Option(help="models root (default: $SCANQC_MODELS_DIR)")] = None,
    test_manifest: Annotated[Path | None, typer.Option(help="held-out manifest: test metrics into metadata")] = None,
    changelog: Annotated[str, typer.Option(help="one line for the metadata changelog")] = "",
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing version")] = False,
) -> None:
    """Export a run to <models>/<task>/<version>/{model.onnx, metadata.json} after a torch/ORT parity check."""
    from scanqc.models.registry import user_models_dir

    from scanqc.errors import ScanQCError

    try:
        from scanqc.training.export import export_run

        dest = export_run(run, version, out or user_models_dir(), changelog=changelog, test_manifest=test_manifest,
                          force=force)
    except ScanQCError as exc:
        _fail(exc)
    meta = json.loads((dest / "metadata.json").read_text())
    typer.echo(json.dumps({"exported": str(dest), "parity_max_abs_diff": meta["onnx"]["parity_max_abs_diff"],
                           "bytes": meta["onnx"]["bytes"], "metrics": meta["metrics"]}, default=str))


@app.command("baseline")
def baseline_cmd(
    task: Annotated[str, typer.Option(help="motion | contrast_phase | coverage")],
    manifest: Annotated[list[Path], typer.Option(help="training manifest(s) (train+val splits are used)")],
    out: Annotated[Path, typer.Option(help="folder for baseline.pkl and baseline_metrics.json")],
    test_manifest: Annotated[Path | None, typer.Option(help="held-out manifest to report metrics on")] = None,
    compare: Annotated[str | None, typer.Option(help="model version to compare on the same test set "
                                                        "('promoted' = the installed one)")] = "promoted",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Classical baseline (MRIQC-style IQMs / CT HU statistics + scikit-learn) trained on the same data."""
    from scanqc.errors import ScanQCError

    try:
        from scanqc.training.baseline import run_baseline

        res = run_baseline(task, manifest, out, test_manifest=test_manifest, compare=compare, seed=seed)
    except ScanQCError as exc:
        _fail(exc)
    typer.echo(json.dumps(res, indent=2, default=str))
