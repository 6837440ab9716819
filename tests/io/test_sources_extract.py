"""Large archives are inflated on several threads: the same files as one by one, and every failure still a coded
error (a member that is not what its header says, a cancelled check), never a traceback."""

from __future__ import annotations

import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scanqc.cancel import CancelToken, CheckCancelled, cancel_scope
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.io import sources
from scanqc.io.sources import safe_extract_zip


def _archive(path: Path, n: int = 24, size: int = 300_000, names: list[str] | None = None) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    members = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(n):
            name = names[i] if names else f"series/{i:03d}.dcm"
            data = rng.integers(0, 16, size, dtype=np.uint8).tobytes()  # compressible, like pixel data
            zf.writestr(name, data)
            members[name] = data  # a repeated name: the last one
    assert sum(len(v) for v in members.values()) >= sources._PARALLEL_FROM_BYTES or names
    return members


def test_a_large_archive_is_inflated_on_threads_into_the_same_files(tmp_path, monkeypatch):
    members = _archive(tmp_path / "a.zip")
    seen: set[str] = set()
    real = sources._extract_member

    def spy(*args, **kw):
        seen.add(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(sources, "EXTRACT_THREADS", 2)
    monkeypatch.setattr(sources, "_extract_member", spy)
    files = safe_extract_zip(tmp_path / "a.zip", tmp_path / "out")
    assert len(seen) == 2 and all(n.startswith("scanqc-unzip") for n in seen)
    assert [f.name for f in files] == [f"a.zip/{n}" for n in members]  # the archive's order
    for f, (name, data) in zip(files, members.items()):
        assert f.path == tmp_path / "out" / name and f.path.read_bytes() == data


def test_a_repeated_name_keeps_the_last_member(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "EXTRACT_THREADS", 2)
    names = [f"s/{i % 10:02d}.dcm" for i in range(24)]
    with pytest.warns(UserWarning):  # zipfile: "Duplicate name"
        members = _archive(tmp_path / "d.zip", names=names)
    files = safe_extract_zip(tmp_path / "d.zip", tmp_path / "out")
    for f in files:
        assert f.path.read_bytes() == members[f.name.split("/", 1)[1]]


def _lie_about_a_size(path: Path, member: int) -> None:
    # The central directory's uncompressed size of one member, 1000 bytes short: the CRC then fails.
    raw = bytearray(path.read_bytes())
    at, found = 0, -1
    for _ in range(member + 1):
        found = raw.index(b"PK\x01\x02", at)
        at = found + 4
    (size,) = struct.unpack_from("<I", raw, found + 24)
    struct.pack_into("<I", raw, found + 24, size - 1000)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("member", [0, 13, 23])
def test_a_member_that_is_not_what_its_header_says_is_a_coded_error_on_any_thread(tmp_path, monkeypatch, member):
    monkeypatch.setattr(sources, "EXTRACT_THREADS", 2)
    _archive(tmp_path / "l.zip")
    _lie_about_a_size(tmp_path / "l.zip", member)
    with pytest.raises(ScanQCError) as info:
        safe_extract_zip(tmp_path / "l.zip", tmp_path / "out")
    assert info.value.code in (ErrorCode.ARCHIVE_CORRUPT, ErrorCode.ARCHIVE_TOO_LARGE)
    assert "series/" in info.value.message  # names the member


def test_a_cancelled_check_stops_every_extraction_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "EXTRACT_THREADS", 2)
    _archive(tmp_path / "c.zip")
    token = CancelToken()
    token.cancel("the request timed out")
    with cancel_scope(token), pytest.raises(CheckCancelled):
        safe_extract_zip(tmp_path / "c.zip", tmp_path / "out")
