"""Expand what a user gives (file, folder, zip) into a list of files on disk.

Zip archives are extracted into a private temporary folder with the guards every upload path
needs: no member may escape the folder (``../`` or absolute names), and member count, total
uncompressed size and per-member compression ratio are capped (zip bombs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.limits import DEFAULT_LIMITS, Limits

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class InputFile:
    path: Path  # where the bytes are on disk now
    name: str  # what to call it in messages (member name inside an archive, or the path)


def is_nifti_name(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def safe_extract_zip(archive: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> list[InputFile]:
    """Extract ``archive`` into ``dest`` after validating every member; return the regular files."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ScanQCError(ErrorCode.ARCHIVE_CORRUPT, f"{archive.name}: not a readable zip archive ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_archive_members:
            raise ScanQCError(
                ErrorCode.ARCHIVE_TOO_LARGE,
                f"{archive.name}: {len(infos)} members, limit is {limits.max_archive_members}",
            )
        total = 0
        dest_resolved = dest.resolve()
        for info in infos:
            name = info.filename
            pure = PurePosixPath(name.replace("\\", "/"))
            target = (dest / pure).resolve()
            if pure.is_absolute() or ".." in pure.parts or not str(target).startswith(str(dest_resolved) + os.sep):
                msg = f"{archive.name}: member {name!r} escapes the archive folder"
                raise ScanQCError(ErrorCode.ARCHIVE_UNSAFE, msg)
            total += info.file_size
            if total > limits.max_archive_bytes:
                raise ScanQCError(
                    ErrorCode.ARCHIVE_TOO_LARGE,
                    f"{archive.name}: uncompressed size exceeds {limits.max_archive_bytes} bytes",
                )
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1_000_000 and ratio > limits.max_compression_ratio:
                raise ScanQCError(
                    ErrorCode.ARCHIVE_TOO_LARGE,
                    f"{archive.name}: member {name!r} expands {ratio:.0f}x "
                    f"(limit {limits.max_compression_ratio:.0f}x), refusing a likely zip bomb",
                )
        out: list[InputFile] = []
        for info in infos:
            pure = PurePosixPath(info.filename.replace("\\", "/"))
            if pure.name.startswith(".") or "__MACOSX" in pure.parts:
                continue
            target = dest / pure
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    # Stream with a hard cap: the header's file_size can lie.
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size or written > limits.max_file_bytes:
                            raise ScanQCError(
                                ErrorCode.ARCHIVE_TOO_LARGE,
                                f"{archive.name}: member {info.filename!r} is larger than its header says",
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise ScanQCError(
                    ErrorCode.ARCHIVE_CORRUPT, f"{archive.name}: member {info.filename!r} unreadable ({exc})"
                ) from None
            out.append(InputFile(target, f"{archive.name}/{info.filename}"))
        return out


def _walk(folder: Path, limits: Limits) -> list[InputFile]:
    files: list[InputFile] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if n.startswith("."):
                continue
            p = Path(root) / n
            if p.is_file():
                files.append(InputFile(p, str(p)))
                if len(files) > limits.max_files:
                    raise ScanQCError(ErrorCode.TOO_LARGE, f"{folder}: more than {limits.max_files} files")
    return files


@contextmanager
def expand_input(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[list[InputFile]]:
    """Yield the files behind one user-given path; temporary extractions are removed afterwards."""
    p = Path(path)
    if not p.exists():
        raise ScanQCError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
    tmp: str | None = None
    try:
        if p.is_dir():
            files = _walk(p, limits)
            if not files:
                raise ScanQCError(ErrorCode.EMPTY_INPUT, f"{path}: folder holds no files")
            # A folder may also contain zips; expand those in place.
            expanded: list[InputFile] = []
            for f in files:
                if _is_zip(f.path):
                    tmp = tmp or tempfile.mkdtemp(prefix="scanqc-zip-")
                    sub = Path(tempfile.mkdtemp(dir=tmp))
                    expanded.extend(safe_extract_zip(f.path, sub, limits))
                else:
                    expanded.append(f)
            yield expanded
        else:
            if p.stat().st_size == 0:
                raise ScanQCError(ErrorCode.EMPTY_INPUT, f"{path}: file is empty (0 bytes)")
            if p.stat().st_size > limits.max_file_bytes:
                size = p.stat().st_size
                raise ScanQCError(ErrorCode.TOO_LARGE, f"{path}: {size} bytes, limit {limits.max_file_bytes}")
            if _is_zip(p):
                tmp = tempfile.mkdtemp(prefix="scanqc-zip-")
                files = safe_extract_zip(p, Path(tmp), limits)
                if not files:
                    raise ScanQCError(ErrorCode.EMPTY_INPUT, f"{path}: archive holds no files")
                yield files
            else:
                yield [InputFile(p, str(path))]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
