"""A watched folder: each entry of ``DIR`` (a series folder, a .zip or a NIfTI file) is checked once it is
complete, i.e. stable: the same file count, total size and newest modification time for ``stable_s``.

A simple rule for exports that copy file by file (a PACS export, a USB stick, a scanner's network share):
there is no end-of-series signal in a folder, so quiet time is the signal, as for the DICOM receiver's
``quiet_period_s``. Hidden and temporary files (``.name``, ``*.tmp``, ``*.part``, ``*.partial``) are ignored,
so a copier that writes to a temporary name and renames is complete exactly when the rename lands. An
entry that changes after it was checked (more files arrived) becomes a candidate again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES)


def signature(path: Path) -> str | None:
    """``files:bytes:newest-mtime-ns`` of a file or a folder tree; None when empty or gone."""
    n = size = newest = 0
    try:
        if path.is_file():
            st = path.stat()
            return f"1:{st.st_size}:{st.st_mtime_ns}"
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not _ignored(d)]
            for f in filenames:
                if _ignored(f):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, f))
                except OSError:
                    continue
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    except OSError:
        return None
    return f"{n}:{size}:{newest}" if n else None


@dataclass
class _Seen:
    signature: str
    since: float  # monotonic time the signature was first seen
    done: bool = False  # yielded with this signature


class FolderWatcher:
    """Polls ``root``; :meth:`poll` returns the entries that became stable since the last call."""

    def __init__(self, root: Path | str, *, stable_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.stable_s = stable_s
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}

    def entries(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if not _ignored(p.name))
        except OSError:
            return []

    def poll(self) -> list[tuple[Path, str]]:
        """(entry, signature) of each entry stable for ``stable_s`` and not yet returned with that signature."""
        now = self.clock()
        ready = []
        present = set()
        for p in self.entries():
            present.add(p)
            sig = signature(p)
            if sig is None:
                continue
            s = self._seen.get(p)
            if s is None or s.signature != sig:
                self._seen[p] = _Seen(sig, now)
                if self.stable_s > 0:
                    continue
                s = self._seen[p]
            if not s.done and now - s.since >= self.stable_s:
                s.done = True
                ready.append((p, sig))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return ready

    def waiting(self) -> list[Path]:
        """Entries seen but not yet stable (still being copied)."""
        return sorted(p for p, s in self._seen.items() if not s.done)

    def watch(self, *, poll_s: float = 1.0, stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[Path, str]]:
        while not stop():
            yield from self.poll()
            time.sleep(poll_s)
