"""`scanqc` sub-commands owned by scanqc.datasets (heavy imports stay inside the commands)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Generate labeled training data and look at it.")


@app.command()
def generate(
    task: Annotated[str, typer.Option(help="motion | contrast_phase | coverage")],
    n: Annotated[int, typer.Option(help="number of cases")],
    out: Annotated[Path, typer.Option(help="output folder (volumes + manifest.csv)")],
    seed: Annotated[int, typer.Option(help="same seed, same data")] = 0,
    workers: Annotated[int, typer.Option(help="processes")] = 1,
    fmt: Annotated[str, typer.Option("--format", "--fmt", help="nifti | dicom")] = "nifti",
    variant: Annotated[str, typer.Option(help="train | test (held-out ranges, split=test)")] = "train",
    val_fraction: Annotated[float, typer.Option(help="share of rows with split=val")] = 0.2,
    min_artefact_to_noise: Annotated[float | None, typer.Option(
        help="motion: redraw a moved case until its artefact reaches this share of the noise sigma "
             "[default: 0.3]; 0 keeps every draw, as the data of motion 1.0.0 / 1.1.0 did")] = None,
    anatomy: Annotated[str, typer.Option(
        help="brain MR: template (MNI152 brain, models up to motion 1.1.0) | head (domain-randomised whole "
             "heads with scalp, skull, face and neck)")] = "template",
    generator: Annotated[str, typer.Option(
        help="abdominal CT source for contrast_phase / coverage: phantom (the models up to 1.2.0) | abdomen "
             "(domain-randomised, datasets/abdomen.py)")] = "phantom",
) -> None:
    """Write N simulated cases for TASK plus a manifest."""
    from scanqc.datasets.generate import generate as _generate

    from scanqc.errors import ScanQCError

    t0 = time.perf_counter()
    extra: dict = {} if min_artefact_to_noise is None else {"min_artefact_to_noise": min_artefact_to_noise}
    if generator != "phantom":
        extra["generator"] = generator
    try:
        path = _generate(task, n, out, seed=seed, workers=workers, fmt=fmt, variant=variant,
                         val_fraction=val_fraction, progress=True, anatomy=anatomy, **extra)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    dt = time.perf_counter() - t0
    typer.echo(f"{n} cases in {dt:.1f} s ({n / dt:.2f} cases/s) -> {path}")


@app.command()
def preview(
    manifest: Annotated[Path, typer.Argument(help="manifest.csv (or its folder)")],
    out: Annotated[Path, typer.Option(help="PNG to write")],
    n: Annotated[int, typer.Option(help="cases to draw")] = 16,
    cols: Annotated[int, typer.Option(help="cases per row")] = 4,
) -> None:
    """Draw a mosaic of cases with their labels."""
    from scanqc.datasets.preview import preview as _preview

    from scanqc.errors import ScanQCError

    try:
        path = _preview(manifest, out, n=n, cols=cols)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def sample(
    kind: Annotated[str, typer.Argument(help="brain_mr | abdomen_ct")],
    out: Annotated[Path, typer.Option(help="folder for the DICOM series")],
    seed: Annotated[int, typer.Option(help="abdomen_ct: anatomy, habitus and noise; brain_mr: 0 = the MNI152 "
                                           "template, any other seed deforms it (a different head) and "
                                           "changes the noise")] = 0,
) -> None:
    """Write a realistic sample DICOM series."""
    from scanqc.datasets.samples import write_sample

    from scanqc.errors import ScanQCError

    try:
        path = write_sample(kind, out, seed=seed)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def phantom(
    kind: Annotated[str, typer.Argument(help="ct_water | ct_acr | mr_uniform | mr_acr")],
    out: Annotated[Path, typer.Option(help="folder for the DICOM series")],
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    hu_offset: Annotated[float, typer.Option(help="CT: HU added everywhere")] = 0.0,
    noise: Annotated[float | None, typer.Option(help="CT: noise SD in HU [5]; MR: Rician sigma [10]")] = None,
    cupping_hu: Annotated[float, typer.Option(help="CT: HU change at the edge vs the centre")] = 0.0,
    nonuniformity_pct: Annotated[float, typer.Option(help="MR: PIU deficit (PIU = 100 - value)")] = 0.0,
    ghosting_pct: Annotated[float, typer.Option(help="MR: N/2 ghost along the phase-encode direction")] = 0.0,
    distortion_mm: Annotated[float, typer.Option(help="MR: error of the horizontal diameter")] = 0.0,
    slice_thickness_mm: Annotated[float | None, typer.Option(help="true thickness; header keeps nominal")] = None,
    station: Annotated[str, typer.Option(help="StationName")] = "QA_CT1",
    serial: Annotated[str, typer.Option(help="DeviceSerialNumber")] = "SN-0001",
) -> None:
    """Write a synthetic QC phantom series with injected faults (docs/phantom-qc.md)."""
    from scanqc.datasets.phantoms import PhantomFaults, write_phantom

    from scanqc.errors import ScanQCError

    faults = PhantomFaults(hu_offset=hu_offset, noise=noise, cupping_hu=cupping_hu,
                           nonuniformity_pct=nonuniformity_pct, ghosting_pct=ghosting_pct,
                           distortion_mm=distortion_mm, slice_thickness_mm=slice_thickness_mm)
    try:
        files = write_phantom(kind, out, faults, seed=seed, station=station, serial=serial)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {len(files)} instances to {out}")
