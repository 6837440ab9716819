"""A real ``scanqc serve`` (BentoML + DICOM receiver) in a subprocess on free loopback ports, shared per session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scanqc.evaluation.benchmark import stop_server

from scanqc.io.dicom_write import write_dicom_series
from scanqc.volume import Volume

pytest.importorskip("bentoml")

AE_SITES = {"CT_SITE01": "site01", "CT_SITE02": "site02", "CT_SITE03": "site03"}

GUIDELINE = """\
study: TEST-ST
title: Test study (slice thickness and FOV only)
modality: CT
series:
  - id: ct
    label: CT
    slice_thickness_mm: [1.0, 5.0]
    fov_mm: [20, 60]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_series(folder: Path, *, thickness: float = 3.0, description: str = "CT", seed: int = 0,
              n: int = 12, header: dict[str, Any] | None = None) -> list[Path]:
    """A small synthetic CT series (32x32, 0.8 mm pixels: FOV 25.6 mm), de-identified."""
    rng = np.random.default_rng(seed)
    vol = Volume(rng.normal(40, 10, (n, 32, 32)).astype("float32"), (thickness, 0.8, 0.8))
    hdr = {"SeriesDescription": description, "PatientName": "", "SliceThickness": thickness, **(header or {})}
    return write_dicom_series(vol, folder, "CT", header=hdr)


@dataclass
class Server:
    base: str
    dicom_port: int
    data_dir: Path
    startup_s: float
    proc: subprocess.Popen
    log: Path

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as r:
                body = r.read()
                ctype = r.headers.get("content-type", "")
                return r.status, json.loads(body) if "json" in ctype else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def post_json(self, path: str, data: dict[str, Any]) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, data=json.dumps(data).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="session")
def qc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("qcserver")
    guideline = root / "test_st.yaml"
    guideline.write_text(GUIDELINE)
    port, dicom_port = free_port(), free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
           "SCANQC_QUIET_PERIOD_S": "1", "SCANQC_AE_SITES": json.dumps(AE_SITES),
           "SCANQC_STUDIES": json.dumps({"TEST-ST": str(guideline)}),
           "SCANQC_SITE_STUDIES": json.dumps({"site03": "TEST-ST"}), "SCANQC_SALT": "test-salt",
           "SCANQC_MAX_LATENCY_MS": "200"}
    log = root / "server.log"
    cmd = [sys.executable, "-m", "scanqc.cli", "serve", "--port", str(port), "--dicom-port", str(dicom_port),
           "--data-dir", str(root / "data")]
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            if proc.poll() is not None:
                pytest.fail(f"scanqc serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if "scanqc ready" in log.read_text():
                break
            if time.monotonic() > deadline:
                pytest.fail(f"scanqc serve not ready in 150 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        server = Server(base, dicom_port, root / "data", time.monotonic() - t0, proc, log)
        yield server
    finally:
        stop_server(proc)  # SIGINT to its process group, SIGKILL after 30 s


def post_files(base: str, files: list[Path], **fields: str) -> tuple[int, dict[str, Any], float]:
    """multipart/form-data upload with httpx; returns (status, json, seconds)."""
    import httpx

    t0 = time.perf_counter()
    handles = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    r = httpx.post(base + "/api/check", files=handles, data=fields, timeout=120)
    return r.status_code, r.json(), time.perf_counter() - t0
