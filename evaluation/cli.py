"""`scanqc` sub-commands owned by scanqc.evaluation (heavy imports stay inside the commands)."""

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


def _command_line() -> str:
    return "scanqc " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# `scanqc evaluate` is a group: without a sub-command it runs the accuracy report; `scanqc evaluate crosssim`
# generates the independent cross-simulator test set.
evaluate_app = typer.Typer(add_completion=False)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    manifest: Annotated[list[Path] | None, typer.Option(
        help="labeled held-out manifest(s); every task found is evaluated (required)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="report folder (report.md, report.html, report.json, PNGs) (required)")] = None,
    models: Annotated[Path | None, typer.Option(
        "--models", help="models folder (<task>/<version>/; its promoted or newest version) [promoted models]")] = None,
    baselines: Annotated[Path | None, typer.Option(
        help="`scanqc baseline --out` results: <task>/baseline.pkl or <task>-baseline/baseline.pkl")] = None,
    baseline_train: Annotated[list[Path] | None, typer.Option(
        help="training manifest(s) to fit the baseline on (train+val rows) when --baselines has none")] = None,
    split: Annotated[str, typer.Option(help="manifest split ('all' = every row); 'test' as in `scanqc models "
                                            "evaluate` and `promote`")] = "test",
    task: Annotated[list[str] | None, typer.Option(help="only these tasks")] = None,
    limit: Annotated[int | None, typer.Option(help="first N cases per task (smoke runs)")] = None,
) -> None:
    """Accuracy report: ROC AUC, sensitivity at fixed specificity, confusion, calibration, breakdowns; CNN vs
    the classical baseline, with PNG plots. Sub-command `crosssim` writes an independent test set."""
    if ctx.invoked_subcommand is not None:
        return
    if not manifest or out is None:
        typer.echo(ctx.get_help())
        typer.echo("USAGE: --manifest and --out are required (or use a sub-command: crosssim)", err=True)
        raise typer.Exit(2)
    from scanqc.evaluation.quality import run_evaluation

    from scanqc.errors import ScanQCError

    try:
        res = run_evaluation(list(manifest), out, models_dir=models, split=split, baselines=baselines,
                             baseline_train=list(baseline_train or []), tasks=list(task or []) or None,
                             limit=limit, command=_command_line())
    except ScanQCError as exc:
        _fail(exc)
    summary = []
    for r in res["tasks"]:
        pm = r["primary_metric"]
        summary.append({"task": r["task"], "n": r["n"], "metric": pm,
                        **{w: r[w]["task_metrics"].get(pm) for w in ("CNN", "baseline") if w in r},
                        **({"QI2_auc_any": r["classical"]["qi2"]["auc_any"]} if r.get("classical") else {})})
    typer.echo(json.dumps({"report": res["report"], "summary": summary}, indent=2, default=str))


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="folder for bench.json and bench.md")] = Path("bench-results"),
    runs: Annotated[int, typer.Option(help="timed in-process `check` runs per series (after warm-up)")] = 20,
    series: Annotated[str, typer.Option(help="comma list of: ct (200 x 512^2), mr (176 x 256^2)")] = "ct,mr",
    service: Annotated[bool, typer.Option("--service/--no-service", help="measure `scanqc serve` throughput")] = True,
    clients: Annotated[str, typer.Option(help="concurrent client counts for the service")] = "1,4,8",
    requests_per_client: Annotated[int, typer.Option(help="uploads per client at each concurrency")] = 3,
    torch_eager: Annotated[bool, typer.Option("--torch/--no-torch", help="torch-eager comparison")] = True,
    cache: Annotated[Path | None, typer.Option(help="where the test series are written once [~/.cache/scanqc]")] = None,
    ct_slices: Annotated[int, typer.Option(help="slices of the CT series")] = 200,
    mr_slices: Annotated[int, typer.Option(help="slices of the MR series")] = 176,
    models: Annotated[Path | None, typer.Option(
        "--models", help="models folder for the in-process and torch parts (CLI and service use the promoted)")] = None,
    dicom: Annotated[bool, typer.Option("--dicom/--no-dicom", help="storescu (and Orthanc-routed) pushes of the "
                                        "samples to `scanqc serve`: last instance -> verdict / console event")] = False,
    pushes: Annotated[int, typer.Option(help="DICOM pushes per sample and route")] = 10,
    in_process: Annotated[bool, typer.Option("--in-process/--no-in-process",
                                             help="the in-process check, floor and CLI parts")] = True,
) -> None:
    """Latency of `check` (stages, floor, torch eager), service throughput and memory; JSON + Markdown."""
    from scanqc.evaluation.benchmark import run_bench

    from scanqc.threads import limit_blas_threads

    limit_blas_threads()  # as `scanqc check` and the service run (scanqc/threads.py)

    from scanqc.errors import ScanQCError

    try:
        res = run_bench(out, runs=runs, kinds=[s.strip() for s in series.split(",") if s.strip()],
                        service=service, clients=[int(c) for c in clients.split(",") if c.strip()],
                        requests_per_client=requests_per_client, torch_eager=torch_eager, cache=cache,
                        ct_slices=ct_slices, mr_slices=mr_slices, command=_command_line(), models_dir=models,
                        dicom=dicom, pushes=pushes, in_process=in_process)
    except ScanQCError as exc:
        _fail(exc)
    typer.echo((out / "bench.md").read_text())
    typer.echo(json.dumps({"json": str(out / "bench.json"), "targets": res.get("targets")}, indent=2))


@evaluate_app.command("crosssim")
def crosssim(
    task: Annotated[str, typer.Option(help="motion (MR heads), contrast_phase (abdominal CT), coverage (both)")],
    out: Annotated[Path, typer.Option(help="folder for the case folders and manifest.csv")],
    n: Annotated[int, typer.Option(help="number of cases (labels balanced)")] = 120,
    seed: Annotated[int, typer.Option(help="master seed; each case's seed derives from (seed, task, index)")] = 1,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
) -> None:
    """Independent cross-simulator test set (own anatomy, k-space motion, CT phantom, truncation): DICOM series
    folders + manifest.csv (split test). Then: scanqc evaluate --manifest OUT/manifest.csv --out REPORT."""
    from scanqc.evaluation.crosssim.generate import TASKS, generate

    if task not in TASKS:
        typer.echo(f"USAGE: --task {task!r}: expected one of {list(TASKS)}", err=True)
        raise typer.Exit(2)
    if n < 1 or workers < 1:
        typer.echo("USAGE: --n and --workers must be >= 1", err=True)
        raise typer.Exit(2)
    res = generate(task, n, seed, out, workers=workers)
    typer.echo(json.dumps(res, indent=2))
