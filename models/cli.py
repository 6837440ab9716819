"""`scanqc models ...`: list, evaluate and promote installed model versions (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console()


def _fail(exc: Exception) -> None:
    code = getattr(exc, "code", None)
    typer.echo(f"{getattr(code, 'value', 'ERROR')}: {getattr(exc, 'message', exc)}", err=True)
    raise typer.Exit(2)


def _check_task(task: str) -> None:
    """An unknown task is a usage error (it used to surface as BAD_MODEL from the registry)."""
    from scanqc.errors import ErrorCode, ScanQCError
    from scanqc.inference import TASKS

    if task not in TASKS:
        import difflib

        near = difflib.get_close_matches(task, list(TASKS), n=1)
        raise ScanQCError(ErrorCode.USAGE, f"unknown task {task!r}; choose from {', '.join(TASKS)}"
                                           + (f" (did you mean {near[0]!r}?)" if near else ""))


def _fmt(m: dict, key: str) -> str:
    v = m.get(key)
    return "" if v is None else f"{v:.3f}"


@app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Installed versions per task (bundled and $SCANQC_MODELS_DIR), their metrics, and which is promoted."""
    from scanqc.models import default_registry
    from scanqc.models.evaluate import PRIMARY_METRIC

    from scanqc.errors import ScanQCError
    from scanqc.inference import TASKS

    reg = default_registry()
    rows = []
    try:
        for task in TASKS:
            rec = reg.promoted_record(task)
            for m in reg.versions(task):
                s = m.summary()
                s["promoted"] = bool(rec and rec["version"] == m.version and rec.get("source") in (None, m.source))
                s["primary"] = PRIMARY_METRIC[task]
                rows.append(s)
    except ScanQCError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    t = Table(title=f"scanqc models (user dir: {reg.user_dir})", caption="* promoted")
    # Narrow columns that never truncate (80-column terminals); where figures come from is listed below.
    for col in ("task", "version", "source", "metric", "validation", "test"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(r["task"], r["version"] + (" *" if r["promoted"] else ""), r["source"], r["primary"],
                  _fmt(r["validation"], r["primary"]), _fmt(r["test"], r["primary"]))
    console.print(t)
    console.print("figures from:")
    for r in rows:
        for k, v in (r["figures"] or {"-": "no metrics recorded"}).items():
            console.print(f"  {r['task']} {r['version']} {k}: {v}", markup=False, highlight=False)


@app.command("evaluate")
def evaluate_cmd(
    task: Annotated[str, typer.Argument()],
    manifest: Annotated[Path, typer.Option(help="labeled held-out manifest")],
    version: Annotated[str | None, typer.Option(help="default: the promoted version")] = None,
    split: Annotated[str, typer.Option(help="manifest split to use ('all' for every row)")] = "test",
) -> None:
    """Metrics of one installed version on a labeled manifest."""
    from scanqc.models import default_registry
    from scanqc.models.evaluate import evaluate_model

    from scanqc.errors import ScanQCError

    reg = default_registry()
    try:
        _check_task(task)
        model = reg.find(task, version) if version else reg.get(task)
        if model is None:
            typer.echo(f"no {task} model installed", err=True)
            raise typer.Exit(2)
        res = evaluate_model(model, manifest, split=split)
    except ScanQCError as exc:
        _fail(exc)
    typer.echo(json.dumps({"task": task, "version": model.version, **res}, indent=2, default=str))


@app.command("promote")
def promote_cmd(
    task: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    manifest: Annotated[Path | None, typer.Option(help="held-out manifest both versions are evaluated on")] = None,
    split: Annotated[str, typer.Option(help="manifest split ('all' for every row)")] = "test",
    margin: Annotated[float, typer.Option(help="tolerated loss: refused only when the candidate's primary metric "
                                               "is below the current one's by more than this, beyond noise")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="promote without (or despite) the comparison")] = False,
) -> None:
    """Make VERSION the one `scanqc check` and the service use, unless it is worse than the current one on
    MANIFEST beyond noise (95 % paired bootstrap interval of the difference on the same cases)."""
    from scanqc.models import default_registry
    from scanqc.models.evaluate import (
        held_out_sources,
        model_outputs,
        paired_difference,
        portable_path,
        promotion_decision,
        task_metrics,
    )

    from scanqc.errors import ErrorCode, ScanQCError

    reg = default_registry()
    try:
        _check_task(task)
        cand = reg.find(task, version)
        current = reg.get(task)
        comparison: dict = {}
        if current is not None and current.version == cand.version and current.source == cand.source:
            typer.echo(f"{task} {version} is already promoted")
            return
        ok, why = True, "first promoted version"
        if manifest is not None:
            comparison["manifest"] = portable_path(manifest)
            rows, t, c_out = model_outputs(cand, manifest, split=split)
            comparison["held_out"] = held_out_sources(rows)
            if not comparison["held_out"]["independent"]:
                # A figure counts only on data its generator never produced (docs/crosssim.md).
                typer.echo(f"note: {len(rows) - comparison['held_out']['independent_rows']} of {len(rows)} held-out "
                           "rows come from the training generator; decide on `scanqc evaluate crosssim` data or "
                           "real labelled scans", err=True)
            comparison["candidate"] = task_metrics(task, t, c_out, cand.thresholds)
            if current is not None:
                _, _, o_out = model_outputs(current, manifest, split=split)
                comparison["current"] = task_metrics(task, t, o_out, current.thresholds)
                comparison["current_version"] = current.version
                comparison["difference"] = paired_difference(task, t, c_out, cand.thresholds, o_out,
                                                             current.thresholds)
                ok, why = promotion_decision(comparison["difference"], margin)
        elif not force and current is not None:
            raise ScanQCError(ErrorCode.USAGE, "give --manifest (held-out set) to compare with the promoted "
                                               f"{task} {current.version}, or --force")
        else:
            why = "forced without a comparison" if current is not None else why
        if not ok and not force:
            typer.echo(f"refused: {task} {version} vs {current.version if current else '-'} on {manifest}: {why}; "
                       "use --force to override", err=True)
            raise typer.Exit(1)
        reason = f"forced ({why})" if force and not ok else why
        path = reg.promote(task, version, reason=reason, comparison=comparison, forced=force and not ok)
    except ScanQCError as exc:
        _fail(exc)
    typer.echo(json.dumps({"promoted": f"{task} {version}", "record": str(path), "reason": reason,
                           "difference": comparison.get("difference")}, default=str))


@app.command("bench")
def bench_cmd(
    runs: Annotated[int, typer.Option(help="timed runs per model (after 3 warm-up runs)")] = 20,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: min(2, cores))")] = None,
) -> None:
    """Median onnxruntime latency (batch 1) of each promoted model at its input size."""
    import os
    import statistics
    import time

    import numpy as np
    from scanqc.models import default_registry

    from scanqc.inference import TASKS

    if threads:
        os.environ["SCANQC_ORT_THREADS"] = str(threads)
    reg = default_registry()
    res = {}
    for task in TASKS:
        m = reg.get(task)
        if m is None:
            continue
        x = np.random.default_rng(0).random((1, m.spec.in_channels, *m.spec.shape), dtype=np.float32)
        for _ in range(3):
            m.run(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            m.run(x)
            ts.append((time.perf_counter() - t) * 1000)
        res[task] = {"version": m.version, "input": [1, m.spec.in_channels, *m.spec.shape],
                     "median_ms": round(statistics.median(ts), 2), "p90_ms": round(sorted(ts)[int(0.9 * len(ts))], 2),
                     "bytes": (m.folder / "model.onnx").stat().st_size}
    res["total_median_ms"] = round(sum(v["median_ms"] for v in res.values() if isinstance(v, dict)), 2)
    typer.echo(json.dumps(res, indent=2))
