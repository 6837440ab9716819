"""Durable writes: a file counts as written only once it and its directory entry are fsynced.

Shared by the DICOM receiver, the HTTP service and the mobile unit's outbox (``scanqc.sync``); base tier,
stdlib only, so a laptop install stores received series the same way the central service does.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, durably."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # dot: readers skip it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """fsync every regular file directly in ``folder``, then the folder itself."""
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)
