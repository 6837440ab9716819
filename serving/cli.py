"""`scanqc` sub-commands owned by scanqc.serving (heavy imports stay inside the commands)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _die_with_parent() -> None:
    """In the child: SIGKILL it when `scanqc serve` dies, even by kill -9 (Linux PR_SET_PDEATHSIG).
    The workers follow their arbiter (scanqc.serving.service._exit_with_parent), so no orphan keeps
    the ports and a restart can bind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _auth_line(settings: object) -> str:
    from scanqc.serving.auth import Gate
    from scanqc.serving.store import Store

    try:
        store = Store(settings.db_url, migrate_schema=False)  # type: ignore[attr-defined]
        try:
            return Gate(settings, store).mode_line()
        finally:
            store.close()
    except Exception as exc:  # the banner must not fail the server
        return f"unknown ({type(exc).__name__})"


def _token_store(config: Path | None, data_dir: Path | None, db_url: str | None) -> tuple[Any, Any]:
    from scanqc.serving.config import load_settings
    from scanqc.serving.store import Store

    from scanqc.errors import ScanQCError

    try:
        settings = load_settings(config, data_dir=data_dir, db_url=db_url)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    return settings, Store(settings.db_url)


# One command with an action argument (scanqc/cli.py merges single commands at top level, not groups).
@app.command()
def tokens(
    action: Annotated[str, typer.Argument(help="create | list | revoke")],
    token_id: Annotated[int | None, typer.Argument(help="for revoke: the token id (see list)")] = None,
    role: Annotated[str | None, typer.Option(help="create: site | monitor | admin | unit")] = None,
    site: Annotated[str | None, typer.Option(help="create: the site a site or unit token is bound to")] = None,
    unit: Annotated[str | None, typer.Option(help="create: the mobile unit a unit token identifies "
                                                  "(docs/mobile.md)")] = None,
    label: Annotated[str | None, typer.Option(help="create: who holds it, e.g. 'CT1 upload script'")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="settings YAML (as for serve)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data dir [./scanqc-data]")] = None,
    db_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL [sqlite:///<data-dir>/scanqc.db]")] = None,
) -> None:
    """API tokens: `create --role site --site S` (printed once; only a keyed hash is stored), `list`,
    `revoke ID` (effective within 5 s). The first token turns authentication on (auth: auto)."""
    from scanqc.serving.auth import create_token

    if action not in ("create", "list", "revoke"):
        typer.echo(f"USAGE: action must be create, list or revoke, not {action!r}", err=True)
        raise typer.Exit(2)
    settings, store = _token_store(config, data_dir, db_url)
    try:
        if action == "create":
            try:
                tid, token = create_token(store, settings, role or "", site, label, unit_id=unit)
            except ValueError as exc:
                typer.echo(f"USAGE: {exc}", err=True)
                raise typer.Exit(2) from None
            typer.echo(f"token {tid} ({role}{' for site ' + site if site else ''}"
                       f"{', unit ' + unit if unit else ''}); store it now, "
                       "it is not shown again:", err=True)
            typer.echo(token)
        elif action == "list":
            for t in store.list_tokens():
                state = "revoked " + t["revoked_at"] if t["revoked_at"] else "active"
                typer.echo(f"{t['id']:>4}  {t['prefix']}...  {t['role']:<8} {t['site_id'] or '-':<12} "
                           f"{t['unit_id'] or '':<8} "
                           f"{t['created_at']}  {state}  {t['label'] or ''}")
        else:
            if token_id is None or not store.revoke_token(token_id):
                typer.echo(f"NOT_FOUND: no active token {token_id}", err=True)
                raise typer.Exit(1)
            typer.echo(f"token {token_id} revoked")
    finally:
        store.close()


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="settings YAML (docs/serving.md)")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [3000]")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM C-STORE port [11112]")] = None,
    ae_title: Annotated[str | None, typer.Option(help="our DICOM AE title [SCANQC]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="uploads + SQLite file [./scanqc-data]")] = None,
    db_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://... "
                                                       "[sqlite:///<data-dir>/scanqc.db]")] = None,
    study: Annotated[str | None, typer.Option(help="default study / guideline (e.g. abdomen_ct, brain_mr)")] = None,
    no_dicom: Annotated[bool, typer.Option("--no-dicom", help="HTTP only, no DICOM receiver")] = False,
    workers: Annotated[int | None, typer.Option(help="BentoML API workers (keep 1 with SQLite)")] = None,
    auth: Annotated[str | None, typer.Option(help="auto | required | off (off: loopback only) [auto]")] = None,
) -> None:
    """Start the QC service: HTTP API, technologist console, dashboard and the DICOM receiver."""
    from scanqc.serving.config import load_settings

    from scanqc.errors import ScanQCError

    try:
        settings = load_settings(config, http_host=host, http_port=port, dicom_port=dicom_port,
                                 dicom_ae_title=ae_title, data_dir=data_dir, db_url=db_url, default_study=study,
                                 dicom_enabled=False if no_dicom else None, workers=workers, auth=auth)
    except ScanQCError as exc:
        typer.echo(f"{exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
           "SCANQC_DATA_DIR": str(settings.data_dir.resolve())}
    env.pop("SCANQC_CONFIG", None)  # everything is in the environment now
    # BentoML wipes $BENTOML_HOME/prometheus_multiproc_dir when any server starts: a per-instance home keeps
    # another `bentoml serve` on this host from resetting our /metrics counters.
    env.setdefault("BENTOML_HOME", str((settings.data_dir / "bentoml").resolve()))
    cmd = [sys.executable, "-m", "bentoml", "serve", "scanqc.serving.service:QCService",
           "--host", settings.http_host, "--port", str(settings.http_port)]
    base = f"http://{settings.http_host}:{settings.http_port}"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        if not _wait_ready(base + "/readyz", proc, timeout=120):
            typer.echo("scanqc: the service did not become ready (see the log above)", err=True)
            proc.terminate()
            raise typer.Exit(proc.wait(timeout=20) or 1)
        dicom = (f"  Scanner (DICOM C-STORE): AE title {settings.dicom_ae_title}, host {settings.dicom_host}, "
                 f"port {settings.dicom_port}" if settings.dicom_enabled else "  DICOM receiver: off (--no-dicom)")
        typer.echo(
            f"\nscanqc ready in {time.monotonic() - t0:.1f} s\n"
            f"{dicom}\n"
            f"  Upload over HTTP:        curl -F files=@series.zip -F station=CT1 {base}/api/check\n"
            f"  Technologist console:    {base}/console/<station>  (station = the scanner's calling AE title)\n"
            f"  Central dashboard:       {base}/dashboard\n"
            f"  API docs (OpenAPI):      {base}/   probes: {base}/readyz {base}/livez   metrics: {base}/metrics\n"
            f"  Data:                    {settings.data_dir.resolve()}  ({settings.public()['db_url']})\n"
            f"  Auth:                    {_auth_line(settings)}\n",
        )
        sys.stdout.flush()
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    raise typer.Exit(proc.returncode if proc.returncode and proc.returncode > 0 else 0)
