"""``scanqc unit ...`` (the van's laptop, offline) and ``scanqc sync`` (back online); docs/mobile.md."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mobile unit: check series offline into a local outbox; `scanqc sync` sends it.")
sync_app = typer.Typer(add_completion=False)

_COLOURS = {"pass": "green", "warn": "yellow", "fail": "red", "error": "magenta"}
UnitDir = Annotated[Path | None, typer.Option("--unit-dir", help="the outbox folder [$SCANQC_UNIT_DIR or "
                                                                 "~/.local/share/scanqc/unit]")]


def _fail(exc: Any, code: int = 2) -> typer.Exit:
    typer.echo(f"{exc.code.value}: {exc.message}", err=True)
    return typer.Exit(code)


def _outbox(unit_dir: Path | None) -> Any:
    from scanqc.sync.outbox import Outbox

    return Outbox(unit_dir)


def _guideline(outbox: Any, protocol: str | None) -> Any:
    from scanqc.guideline import load_guideline

    ref = protocol or outbox.get("protocol")
    return load_guideline(ref) if ref else None


def _exit_code(statuses: list[str]) -> int:
    if "error" in statuses:
        return 2
    return 1 if "fail" in statuses else 0


@app.command("init")
def init(
    unit: Annotated[str, typer.Option("--unit", help="this unit's id, as its token was issued (e.g. VAN1)")],
    server: Annotated[str | None, typer.Option(help="central service URL, e.g. https://qc.example.org")] = None,
    token: Annotated[str | None, typer.Option(help="the unit's API token (or $SCANQC_UNIT_TOKEN at sync time); "
                                                   "kept in <unit-dir>/token, mode 0600")] = None,
    keep: Annotated[str | None, typer.Option(help="verdicts | failing | all: which series' files to keep and "
                                                  "upload [failing]")] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", "-p", help="default acquisition guideline")] = None,
    site: Annotated[str | None, typer.Option(help="the site the unit belongs to (the server checks it)")] = None,
    unit_dir: UnitDir = None,
) -> None:
    """Set up the laptop once (no network needed): unit id, server, token, what to keep."""
    from scanqc.errors import ScanQCError

    try:
        with _outbox(unit_dir) as ob:
            ob.configure(unit_id=unit, server=server, keep=keep, site=site)
            if protocol:
                _guideline(ob, protocol)  # fail now, not in the van
                ob.set("protocol", protocol)
            if token:
                ob.set_token(token)
            typer.echo(f"unit {ob.unit_id}: outbox {ob.root}; server {ob.get('server') or '(none yet)'}; "
                       f"keep {ob.keep}; token {'set' if ob.token() else 'not set'}")
    except ScanQCError as exc:
        raise _fail(exc) from None


@app.command("check")
def check(
    paths: Annotated[list[Path], typer.Argument(help="series folders, .zip or NIfTI files")],
    protocol: Annotated[str | None, typer.Option("--protocol", "-p")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON verdict per line")] = False,
    unit_dir: UnitDir = None,
) -> None:
    """Check series offline (as `scanqc check`) and keep every verdict in the outbox."""
    from rich.console import Console

    from scanqc.errors import ScanQCError
    from scanqc.sync.outbox import check_and_record

    console = Console()
    statuses = []
    try:
        with _outbox(unit_dir) as ob:
            g = _guideline(ob, protocol)
            for p in paths:
                for v, rec, created in check_and_record(ob, p, g):
                    statuses.append(v.status)
                    if as_json:
                        sys.stdout.write(json.dumps({**v.to_dict(), "outbox_key": rec.key, "recorded": created},
                                                    default=str) + "\n")
                    else:
                        console.print(_line(p, v, rec, created))
            if not as_json:
                console.print(f"[dim]outbox: {ob.counts()['pending']} verdict(s) to sync[/]")
    except ScanQCError as exc:
        raise _fail(exc) from None
    raise typer.Exit(_exit_code(statuses))


def _why(v: Any) -> str:
    if v.error:
        return f"{v.error['code']}: {v.error['message']}"
    return "; ".join(f"{n}: {r.message}" for n, r in v.checks.items() if r.status in ("fail", "warn"))


def _line(path: Path, v: Any, rec: Any, created: bool) -> str:
    c = _COLOURS.get(v.status, "white")
    why = _why(v)
    again = "" if created else f"  [dim](this data is already recorded, as {rec.status.upper()})[/]"
    return f"[bold {c}]{v.status.upper():5}[/] {path.name}  {v.series_description or ''}  {why}{again}"


@app.command("watch")
def watch(
    folder: Annotated[Path, typer.Argument(help="where series land (one folder, .zip or NIfTI per series)")],
    protocol: Annotated[str | None, typer.Option("--protocol", "-p")] = None,
    stable_s: Annotated[float, typer.Option(help="a series is complete after this long unchanged")] = 5.0,
    poll_s: Annotated[float, typer.Option(help="seconds between looks at the folder")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="check what is there, wait for it to settle, exit")] = False,
    unit_dir: UnitDir = None,
) -> None:
    """Watch a folder, check each series as it lands (offline), show the verdicts live."""
    from rich.console import Console
    from rich.live import Live

    from scanqc.errors import ScanQCError
    from scanqc.ingest.watch import FolderWatcher
    from scanqc.sync.outbox import check_and_record

    if not folder.is_dir():
        typer.echo(f"NOT_FOUND: {folder} is not a folder", err=True)
        raise typer.Exit(2)
    console = Console()
    rows: list[tuple[str, str, str]] = []
    statuses: list[str] = []
    try:
        ob = _outbox(unit_dir)
        g = _guideline(ob, protocol)
        unit = ob.unit_id
    except ScanQCError as exc:
        raise _fail(exc) from None
    watcher = FolderWatcher(folder, stable_s=stable_s)
    started = time.monotonic()
    try:
        with Live(_view(unit, folder, rows, [], ob.counts()), console=console, refresh_per_second=4,
                  transient=False) as live:
            while True:
                ready = watcher.poll()
                for entry, sig in ready:
                    if ob.seen(entry, sig):
                        continue
                    rows.append((entry.name, "checking", ""))
                    live.update(_view(unit, folder, rows, watcher.waiting(), ob.counts()))
                    try:
                        results = check_and_record(ob, entry, g)
                    except (ScanQCError, OSError) as exc:  # e.g. the outbox disk is full: say so, keep watching
                        rows[-1] = (entry.name, "error", f"NOT RECORDED: {exc}")
                        statuses.append("error")
                        continue
                    ob.mark_seen(entry, sig)
                    rows.pop()
                    for v, rec, created in results:
                        statuses.append(v.status)
                        why = _why(v)
                        rows.append((entry.name, v.status,
                                     why + ("" if created else f" (already recorded, as {rec.status.upper()})")))
                live.update(_view(unit, folder, rows, watcher.waiting(), ob.counts()))
                if once and not watcher.waiting() and time.monotonic() - started >= stable_s and not ready:
                    break
                time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        counts = ob.counts()
        ob.close()
    console.print(f"checked {len(statuses)} series; outbox: {counts['pending']} to sync, {counts['synced']} synced"
                  " (`scanqc sync` when online)")
    raise typer.Exit(_exit_code(statuses) if once else 0)


def _view(unit: str, folder: Path, rows: list[tuple[str, str, str]], waiting: list[Path],
          counts: dict[str, int]) -> Any:
    from rich.table import Table

    t = Table(title=f"unit {unit}: watching {folder}  ·  outbox {counts['pending']} to sync, "
                    f"{counts['synced']} synced", title_justify="left")
    t.add_column("series")
    t.add_column("verdict")
    t.add_column("why")
    for name, status, why in rows[-30:]:
        c = _COLOURS.get(status, "cyan")
        t.add_row(name, f"[bold {c}]{status.upper()}[/]", why)
    for p in waiting:
        t.add_row(p.name, "[dim]arriving...[/]", "")
    return t


@app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json")] = False, unit_dir: UnitDir = None) -> None:
    """What the outbox holds: verdicts waiting to sync, synced, failed attempts."""
    from scanqc.errors import ScanQCError

    try:
        with _outbox(unit_dir) as ob:
            counts = ob.counts()
            failed = [r for r in ob.pending() if r.last_error]
            out = {"unit_id": ob.get("unit_id"), "server": ob.get("server"), "keep": ob.keep, **counts,
                   "last_sync": ob.get("last_sync"), "last_errors": [(r.key[:12], r.last_error) for r in failed[:20]]}
    except ScanQCError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(out))
    else:
        typer.echo(f"unit {out['unit_id']} -> {out['server']}: {counts['pending']} to sync, {counts['synced']} synced"
                   f" (last sync {out['last_sync'] or 'never'})")
        for k, e in out["last_errors"]:
            typer.echo(f"  {k}: {e}")


@sync_app.command("sync")
def sync_cmd(
    server: Annotated[str | None, typer.Option(help="central service URL [from `scanqc unit init`]")] = None,
    token: Annotated[str | None, typer.Option(help="API token [$SCANQC_UNIT_TOKEN or <unit-dir>/token]")] = None,
    max_kbps: Annotated[float | None, typer.Option(help="cap the upload rate (kilobytes per second)")] = None,
    retries: Annotated[int, typer.Option(help="attempts per request before giving up (backoff doubles)")] = 6,
    backoff_s: Annotated[float, typer.Option(help="first retry delay in seconds")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the sync report as JSON")] = False,
    unit_dir: UnitDir = None,
) -> None:
    """Send the unit's outbox to the central service: resumable, idempotent, safe to run again.

    Exit 0 everything sent, 1 some records refused (kept, see `scanqc unit status`), 2 server unreachable or
    the unit refused (nothing lost: run it again)."""
    from scanqc.errors import ScanQCError
    from scanqc.sync.client import SyncClient, sync
    from scanqc.sync.outbox import iso_utc, utc_now

    try:
        ob = _outbox(unit_dir)
    except ScanQCError as exc:
        raise _fail(exc) from None
    try:
        url = server or ob.get("server")
        if not url:
            typer.echo("USAGE: no server: give --server URL or set it with `scanqc unit init --server`", err=True)
            raise typer.Exit(2)
        client = SyncClient(url, token or ob.token(), retries=retries, backoff_s=backoff_s, max_kbps=max_kbps)

        def progress(msg: str, _rec: Any) -> None:
            if not as_json:
                typer.echo(msg, err=True)

        try:
            report = sync(ob, client, progress=progress)
        except ScanQCError as exc:
            if as_json:
                typer.echo(json.dumps({"error": exc.to_dict(), **ob.counts()}))
            raise _fail(exc) from None
        ob.set("last_sync", iso_utc(utc_now()))
    finally:
        ob.close()
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo(f"synced {report.synced} new, {report.already} already there, {len(report.failed)} refused; "
                   f"{report.files_sent} file(s), {report.bytes_sent} bytes sent ({report.bytes_raw} raw); "
                   f"backlog {report.backlog}; clock offset {report.clock_offset_s} s"
                   + (f"; {report.disagreements} disagreement(s) with the centre's re-check"
                      if report.disagreements else ""))
    raise typer.Exit(1 if report.failed else 0)
