"""Command line: ``scanqc check``, plus the data, training, model and service commands."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="scanqc: QC verdicts for clinical-trial CT and MRI.")


@app.callback()
def _root() -> None:
    """scanqc: QC verdicts for clinical-trial CT and MRI within a second of the series arriving."""
console = Console(stderr=False)
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
_COLOURS = {"pass": "green", "warn": "yellow", "fail": "red", "error": "magenta", "skipped": "dim"}


def _exit_code(statuses: list[str]) -> int:
    if any(s == "error" for s in statuses):
        return EXIT_ERROR
    return EXIT_FAIL if any(s == "fail" for s in statuses) else EXIT_OK


def sample_series_path() -> Path:
    """An abdominal CT sample series (phantom, portal venous, 2.5 mm), written once into the user cache."""
    import os

    from scanqc.datasets.samples import write_sample

    cache = Path(os.environ.get("SCANQC_CACHE", Path.home() / ".cache" / "scanqc")) / "samples" / "abdomen_ct"
    if not (cache / ".complete").exists():
        err_console.print(f"[dim]writing the sample series to {cache} (once)...[/]")
        write_sample("abdomen_ct", cache, seed=0)
        (cache / ".complete").touch()
    return cache


def _print_table(verdicts: list) -> None:
    for v in verdicts:
        colour = _COLOURS[v.status]
        title = (f"[bold {colour}]{v.status.upper()}[/]  {v.input}  "
                 f"{v.modality or ''} {v.series_description or ''}  ({v.elapsed_ms:.0f} ms)")
        if v.error:
            console.print(title)
            console.print(f"  [magenta]{v.error['code']}[/]: {v.error['message']}")
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("score", justify="right")
        table.add_column("model", no_wrap=True)  # the version that decided (model checks only)
        table.add_column("finding")
        table.add_column("action")
        for name, c in v.checks.items():
            version = c.extra.get("model_version")
            table.add_row(name, f"[{_COLOURS[c.status]}]{c.status}[/]",
                          "" if c.score is None else f"{c.score:.2f}", f"{version}" if version else "",
                          c.message, c.action or "")
        console.print(table)
        for n in v.notes:
            console.print(f"  [dim]note: {n}[/]")


@app.command()
def check(
    paths: Annotated[list[Path] | None, typer.Argument(help="DICOM files/folders, .zip, .nii/.nii.gz")] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", "-p",
                        help="acquisition guideline YAML (or a shipped example name: brain_mr, abdomen_ct)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per series (JSON Lines)")] = False,
    visit: Annotated[str | None, typer.Option(help="visit name (default: ClinicalTrialTimePointID)")] = None,
    baseline_date: Annotated[str | None, typer.Option(help="subject's baseline date YYYY-MM-DD")] = None,
    modality: Annotated[str | None, typer.Option(help="modality for NIfTI inputs (CT or MR)")] = None,
    sample: Annotated[bool, typer.Option(
        "--sample", help="check a sample abdominal CT (phantom; abdomen_ct guideline unless --protocol)")] = False,
    models: Annotated[Path | None, typer.Option(
        "--models", help="your models folder (<task>/<version>/, promoted.json), as $SCANQC_MODELS_DIR: its "
                         "promoted versions, else the bundled ones")] = None,
) -> None:
    """Check series and print verdicts. Exit 0 all pass/warn, 1 any fail, 2 any error."""
    from scanqc.errors import ScanQCError
    from scanqc.threads import limit_blas_threads

    limit_blas_threads()
    from scanqc.guideline import load_guideline
    from scanqc.pipeline import apply_required_series, check_paths

    inputs = list(paths or [])
    if sample:
        inputs.append(sample_series_path())
        protocol = protocol or "abdomen_ct"
    if not inputs:
        err_console.print("[red]USAGE[/]: give at least one PATH (or --sample)")
        raise typer.Exit(EXIT_ERROR)
    registry = None
    try:
        guideline = load_guideline(protocol) if protocol else None
        base = dt.date.fromisoformat(baseline_date) if baseline_date else None
        if models is not None:
            from scanqc.errors import ErrorCode
            from scanqc.models.registry import ModelRegistry

            if not models.is_dir():
                raise ScanQCError(ErrorCode.USAGE, f"--models {models}: no such folder")
            registry = ModelRegistry(user_dir=models)
    except ScanQCError as exc:
        _emit_usage_error(exc.code.value, exc.message, as_json)
        raise typer.Exit(EXIT_ERROR) from None
    except ValueError:
        _emit_usage_error("USAGE", f"--baseline-date {baseline_date!r} is not YYYY-MM-DD", as_json)
        raise typer.Exit(EXIT_ERROR) from None
    verdicts = []
    for v in check_paths([str(p) for p in inputs], guideline, visit=visit, baseline_date=base,
                         modality_hint=modality.upper() if modality else None, models=registry):
        verdicts.append(v)
    apply_required_series(verdicts, guideline, visit)
    if as_json:
        for v in verdicts:
            sys.stdout.write(json.dumps(v.to_dict(), default=str) + "\n")
        sys.stdout.flush()
    else:
        _print_table(verdicts)
    raise typer.Exit(_exit_code([v.status for v in verdicts]))


def _emit_usage_error(code: str, message: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"input": None, "series_uid": None, "modality": None, "status": "error",
                                     "checks": {}, "error": {"code": code, "message": message},
                                     "elapsed_ms": 0.0}) + "\n")
    else:
        err_console.print(f"[red]{code}[/]: {message}")


def _register_subcommands() -> None:
    """Sub-apps live with the code they drive; each imports its heavy dependencies lazily."""
    from scanqc.datasets.cli import app as data_app
    from scanqc.evaluation.cli import app as evaluation_app
    from scanqc.models.cli import app as models_app
    from scanqc.serving.cli import app as serving_app
    from scanqc.sync.cli import app as unit_app
    from scanqc.sync.cli import sync_app
    from scanqc.training.cli import app as training_app

    app.add_typer(data_app, name="data", help="Generate and preview training data; manifests.")
    app.add_typer(models_app, name="models", help="List, evaluate and promote installed model versions.")
    app.add_typer(unit_app, name="unit", help="Mobile unit: check offline into a local outbox (docs/mobile.md).")
    # Single-command groups are merged at top level: `scanqc train`, `scanqc export`, `scanqc serve`...
    for sub in (training_app, serving_app, evaluation_app, sync_app):
        for cmd in sub.registered_commands:
            app.registered_commands.append(cmd)
        app.registered_groups.extend(sub.registered_groups)  # e.g. `scanqc evaluate [crosssim]`


_register_subcommands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # pydicom logs decoder tracebacks at ERROR; our coded error already says what was wrong. Import it
    # first: pydicom.config resets its logger's level on import.
    import pydicom  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    app()  # typer/click exit with 2 on usage errors


if __name__ == "__main__":
    main()
