"""Issue 7.2: body size (while streaming), instances, voxels, zip members, stalled bodies: coded 4xx, bounded RSS."""

from __future__ import annotations

import select
import socket
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from .conftest import LIMITS, upload
from .helpers import ServerProc, ct_series

pytestmark = pytest.mark.slow


def _rss_mb(srv: ServerProc) -> float:
    total = 0
    for pid in srv.pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _raw_request(srv: ServerProc, head: bytes, chunks: int, chunk: bytes,
                 pause_s: float = 0.0) -> tuple[int, bytes, int]:
    """Send a request head then body chunks until the server answers; returns (status, body, bytes sent)."""
    host, port = srv.base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        for _ in range(chunks):
            if select.select([s], [], [], 0)[0]:
                break  # the server has answered
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if pause_s:
                time.sleep(pause_s)
        s.settimeout(30)
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2], sent


def test_declared_oversize_body_refused_before_reading(secure_server: ServerProc) -> None:
    token = secure_server.tokens["site01"]
    head = (f"POST /api/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n").encode()
    t0 = time.monotonic()
    status, body, _ = _raw_request(secure_server, head, 10, b"x" * 65536)
    assert status == 413 and b'"TOO_LARGE"' in body
    assert time.monotonic() - t0 < 5


def test_streamed_oversize_body_stops_at_the_limit_with_bounded_memory(secure_server: ServerProc) -> None:
    """A chunked 64 MiB upload against a 4 MB limit: 413 after ~4 MB, nothing kept, RSS flat."""
    token = secure_server.tokens["site01"]
    before = _rss_mb(secure_server)
    n_http = len(list(secure_server.data_dir.glob("incoming/http/*")))
    head = (f"POST /api/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    payload = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.dcm\"\r\n\r\n" + b"\0" * 65000
    chunk = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    status, body, sent = _raw_request(secure_server, head, 1024, chunk)  # up to 64 MiB
    after = _rss_mb(secure_server)
    print(f"streamed {sent / 2**20:.1f} MiB before the 413; server RSS {before:.0f} -> {after:.0f} MiB")
    assert status == 413 and b'"TOO_LARGE"' in body
    assert sent < 4 * int(LIMITS["SCANQC_MAX_UPLOAD_BYTES"])  # stopped near the limit, not at 64 MiB
    assert after - before < 40
    assert len(list(secure_server.data_dir.glob("incoming/http/*"))) == n_http  # nothing acknowledged


def test_stalled_body_times_out_with_408(secure_server: ServerProc) -> None:
    token = secure_server.tokens["site01"]
    head = (f"POST /api/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n").encode()
    t0 = time.monotonic()
    status, body, _ = _raw_request(secure_server, head, 0, b"")
    assert status == 408 and b'"REQUEST_TIMEOUT"' in body
    assert time.monotonic() - t0 < 10


def test_ingest_limits_are_coded_4xx(secure_server: ServerProc, tmp_path: Path) -> None:
    r = upload(secure_server, "site02", ct_series(tmp_path / "many", n=41, size=8, seed=1))  # max 40 instances
    assert r.status_code == 422 and r.json()["error"]["code"] == "TOO_LARGE", r.text
    r = upload(secure_server, "site02", ct_series(tmp_path / "big", n=20, size=128, seed=2))  # 327k > 200k voxels
    assert r.status_code == 422 and r.json()["error"]["code"] == "TOO_LARGE", r.text
    files = ct_series(tmp_path / "zip", n=31, size=8, seed=3)
    z = tmp_path / "members.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in files:
            zf.write(f, f.name)
    r = upload(secure_server, "site02", [z])  # 31 members > 30
    assert r.status_code == 422 and r.json()["error"]["code"] == "ARCHIVE_TOO_LARGE", r.text
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 50_000_000)  # 50 MB of zeros in ~50 kB
    r = upload(secure_server, "site02", [bomb])
    assert r.status_code == 422 and r.json()["error"]["code"] == "ARCHIVE_TOO_LARGE", r.text
