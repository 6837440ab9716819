"""DIMSE statuses, folder markers and identifier hygiene shared by the storage SCP and MPPS."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

# DIMSE statuses (PS3.4 Annex B / F).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # transient: the modality should retry
CANNOT_UNDERSTAND = 0xC000  # permanent: retrying the same object will not help
NO_SUCH_OBJECT = 0x0112
DUPLICATE_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
INVALID_VALUE = 0x0106

MARKER = ".verdict"
ARRIVAL = ".arrival.json"
PROVISIONAL = ".provisional.json"  # ids of the provisional verdict shown, until the final one
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _valid_uid(v: object) -> str | None:
    s = str(v or "").strip()
    return s if len(s) <= 64 and _UID.match(s) else None


def _safe_name(s: str) -> str:
    """A site id as a single path component (site ids come from config, but never trust a path)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", s.strip()) or "_"
    return "_" + out if out.startswith(".") else out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _dcm_files(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in it if e.name.endswith(".dcm") and not e.name.startswith(".") and e.is_file()]


def _generate_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())
