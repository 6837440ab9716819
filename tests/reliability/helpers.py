"""Start/stop real ``scanqc serve`` processes and build test series for the reliability tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.io.dicom_write import write_dicom_series
from scanqc.volume import Volume

AE_SITES = {"CT_SITE01": "site01", "CT_SITE02": "site02"}
SALT = "reliability-test-salt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_series(folder: Path, *, n: int = 12, size: int = 32, seed: int = 0, header: dict[str, Any] | None = None,
              thickness: float = 3.0) -> list[Path]:
    rng = np.random.default_rng(seed)
    vol = Volume(rng.normal(40, 10, (n, size, size)).astype("float32"), (thickness, 0.8, 0.8))
    hdr = {"SeriesDescription": "CT", "PatientName": "", "SliceThickness": thickness, **(header or {})}
    return write_dicom_series(vol, folder, "CT", header=hdr)


def make_tokens(data_dir: Path, specs: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    """Create tokens in the server's database before it starts: name -> (role, site) gives name -> token."""
    from scanqc.serving.auth import create_token
    from scanqc.serving.config import load_settings
    from scanqc.serving.store import Store

    settings = load_settings(None, data_dir=data_dir, salt=SALT)
    store = Store(settings.db_url)
    try:
        return {name: create_token(store, settings, role, site, name)[1] for name, (role, site) in specs.items()}
    finally:
        store.close()


@dataclass
class ServerProc:
    base: str
    dicom_port: int
    data_dir: Path
    log: Path
    env: dict[str, str]
    cmd: list[str]
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    tokens: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 180) -> ServerProc:
        t0 = time.monotonic()
        start_mark = self.log.stat().st_size if self.log.exists() else 0
        fh = open(self.log, "a")  # appended across restarts: the PHI test greps all of it
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        fh.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scanqc serve exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            with open(self.log, "rb") as f:
                f.seek(start_mark)
                if b"scanqc ready" in f.read() and self._ready():
                    break
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"scanqc serve not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0
        return self

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The whole process tree of the server (for RSS sampling)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """kill -9 of the whole process tree (no shutdown hooks, no flushes).

        BentoML's workers do not all stay in the process group of ``scanqc serve``, so the tree is walked
        first and every process in it gets SIGKILL."""
        import psutil

        if self.proc is None:
            return
        procs = []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)
        psutil.wait_procs(procs, timeout=30)

    def kill_top(self, wait_s: float = 15.0) -> list[int]:
        """kill -9 of `scanqc serve` alone; returns the pids of its tree still alive after ``wait_s``
        (none expected: the arbiter dies with it and the workers with the arbiter)."""
        import psutil

        tree = self.pids()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        procs = []
        for pid in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        _, alive = psutil.wait_procs(procs, timeout=wait_s)
        for p in alive:  # clean up whatever survived, then report it
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        return [p.pid for p in alive]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil

        tree = self.pids()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        # nothing of ours may outlive the test
        for pid in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                try:
                    p.wait(timeout=10)
                except psutil.TimeoutExpired:
                    p.kill()


def server(root: Path, *, extra_env: dict[str, str] | None = None, quiet_s: float = 1.0) -> ServerProc:
    """A configured (not yet started) ``scanqc serve`` on free loopback ports under ``root``."""
    port, dicom_port = free_port(), free_port()
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
           "SCANQC_QUIET_PERIOD_S": str(quiet_s), "SCANQC_AE_SITES": json.dumps(AE_SITES), "SCANQC_SALT": SALT,
           "SCANQC_MAX_LATENCY_MS": "200", **(extra_env or {})}
    env.pop("SCANQC_CONFIG", None)
    cmd = [sys.executable, "-m", "scanqc.cli", "serve", "--port", str(port), "--dicom-port", str(dicom_port),
           "--data-dir", str(data)]
    return ServerProc(f"http://127.0.0.1:{port}", dicom_port, data, root / "server.log", env, cmd)


def send_c_store(port: int, files: list[Path], calling_ae: str) -> list[int] | None:
    """C-STORE files on one association; None when the association is rejected."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANQC")
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def series_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
