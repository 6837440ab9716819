"""`scanqc` sub-commands owned by scanqc.datasets (heavy imports stay inside the commands)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)
