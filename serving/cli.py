"""`scanqc` sub-commands owned by scanqc.serving (heavy imports stay inside the commands)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

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
) -> None:
    """Start the QC service: HTTP API, technologist console, dashboard and the DICOM receiver."""
    from scanqc.serving.config import load_settings

    from scanqc.errors import ScanQCError

    try:
        settings = load_settings(config, http_host=host, http_port=port, dicom_port=dicom_port,
                                 dicom_ae_title=ae_title, data_dir=data_dir, db_url=db_url, default_study=study,
                                 dicom_enabled=False if no_dicom else None, workers=workers)
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
    proc = subprocess.Popen(cmd, env=env)
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
            f"  Data:                    {settings.data_dir.resolve()}  ({settings.public()['db_url']})\n",
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
