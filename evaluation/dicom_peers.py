"""Real DICOM peers for tests and ``scanqc bench --dicom``: dcmtk's ``storescu`` and an Orthanc router.

Neither is written here: both are the Debian packages (``make dicom-clients``). :func:`storescu` pushes files
over one association, as a modality does. :class:`Orthanc` runs Orthanc with its own configuration in a
temporary folder, forwarding every instance it stores to scanqc with a Lua ``OnStoredInstance`` callback that
keeps the scanner's AE title as the calling AE (``SendToModality(id, 'scanqc', origin['RemoteAet'])``, see
the measured interoperability notes in docs/dicom.md), the way a site PACS routes.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

LUA_FORWARD = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] == 'DicomProtocol' then
    SendToModality(instanceId, 'scanqc', origin['RemoteAet'])
  end
end
"""


def dcmtk_storescu() -> str | None:
    """Path of dcmtk's ``storescu``, or None. pynetdicom installs a Python ``storescu`` of its own (other options)
    into the environment's bin folder, which shadows dcmtk's when that environment is activated: skip scripts."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        exe = shutil.which("storescu", path=d or ".")
        if exe is None:
            continue
        with open(exe, "rb") as f:
            if f.read(2) != b"#!":  # a compiled binary, not a console-script shim
                return exe
    return None


def missing_peers() -> list[str]:
    """Which of (dcmtk's) storescu / Orthanc is not installed (empty: both are)."""
    return [b for b, found in (("storescu", dcmtk_storescu()), ("Orthanc", shutil.which("Orthanc"))) if not found]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together, so no two calls hand out the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def storescu(port: int, files: list[Path], *, calling: str = "SCANNER1", called: str = "SCANQC",
             host: str = "127.0.0.1", timeout: float = 120.0) -> float:
    """Push ``files`` with dcmtk storescu over one association; returns the monotonic time it ended
    (all instances acknowledged, association released). Raises on a failed push."""
    exe = dcmtk_storescu()
    if exe is None:
        raise RuntimeError("dcmtk's storescu is not installed (make dicom-clients)")
    cmd = [exe, "-aet", calling, "-aec", called, "-nh", host, str(port), *map(str, files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    end = time.monotonic()
    if r.returncode != 0:
        raise RuntimeError(f"storescu exited {r.returncode}: {(r.stderr or r.stdout)[-2000:]}")
    return end


class Orthanc:
    """Orthanc on free loopback ports with a ``scanqc`` modality; ``with Orthanc(port) as o: o.dicom_port``."""

    def __init__(self, scanqc_port: int, *, scanqc_aet: str = "SCANQC", lua: str = LUA_FORWARD) -> None:
        self.scanqc_port = scanqc_port
        self.scanqc_aet = scanqc_aet
        self.lua = lua
        self.http_port, self.dicom_port = free_ports(2)
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.dir = Path(tempfile.mkdtemp(prefix="scanqc-orthanc-"))
        (self.dir / "forward.lua").write_text(self.lua)
        config = {
            "Name": "scanqc-test-router", "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomModalities": {"scanqc": [self.scanqc_aet, "127.0.0.1",
                                                                        self.scanqc_port]},
            "LuaScripts": [str(self.dir / "forward.lua")], "Plugins": [], "StableAge": 60,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config))
        log = open(self.dir / "orthanc.log", "w")
        self.proc = subprocess.Popen(["Orthanc", str(self.dir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc not ready in {timeout} s: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return (self.dir / "orthanc.log").read_text() if self.dir else ""
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
