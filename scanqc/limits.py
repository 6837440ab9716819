"""Input limits: what a single series or archive may hold before it is refused.

Defaults are generous for clinical CT/MR (a 2000-slice 512x512 CT is 0.5 G voxels) and
can be lowered by the service configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Limits:
    max_voxels: int = 600_000_000  # per series volume
    max_dimension: int = 4096  # rows / columns / slices
    max_instances: int = 5000  # instances per series
    max_files: int = 20_000  # files in one input (folder or archive)
    max_file_bytes: int = 2 * 1024**3
    max_archive_members: int = 20_000  # all archives of one input together
    max_archive_bytes: int = 4 * 1024**3  # uncompressed size, all archives of one input together
    max_compression_ratio: float = 200.0  # per member >= 64 KiB and over the whole input: zip-bomb guard

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(
            max_voxels=_env_int("SCANQC_MAX_VOXELS", d.max_voxels),
            max_dimension=_env_int("SCANQC_MAX_DIMENSION", d.max_dimension),
            max_instances=_env_int("SCANQC_MAX_INSTANCES", d.max_instances),
            max_files=_env_int("SCANQC_MAX_FILES", d.max_files),
            max_file_bytes=_env_int("SCANQC_MAX_FILE_BYTES", d.max_file_bytes),
            max_archive_members=_env_int("SCANQC_MAX_ARCHIVE_MEMBERS", d.max_archive_members),
            max_archive_bytes=_env_int("SCANQC_MAX_ARCHIVE_BYTES", d.max_archive_bytes),
        )


DEFAULT_LIMITS = Limits()
