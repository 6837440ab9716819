"""Coded errors.

Every failure a user can cause (bad file, bad archive, absurd header, bad guideline) is a
:class:`ScanQCError` with a stable ``code``; front ends turn it into the verdict's
``error`` object or an HTTP 4xx, never a traceback.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    NOT_FOUND = "NOT_FOUND"  # path does not exist
    EMPTY_INPUT = "EMPTY_INPUT"  # empty folder / archive / file
    NOT_DICOM = "NOT_DICOM"  # neither DICOM nor NIfTI (random bytes, text, ...)
    UNREADABLE = "UNREADABLE"  # looked like DICOM/NIfTI but the parser failed
    TRUNCATED = "TRUNCATED"  # file or pixel data shorter than the header says
    NO_PIXEL_DATA = "NO_PIXEL_DATA"  # an image object without pixels
    NO_IMAGE_SERIES = "NO_IMAGE_SERIES"  # only non-image objects (SR, RTPLAN, ...)
    UNSUPPORTED_IMAGE = "UNSUPPORTED_IMAGE"  # colour / secondary capture / waveform: not a CT/MR volume
    DECODE_FAILED = "DECODE_FAILED"  # compressed pixel data could not be decoded
    INCONSISTENT_SERIES = "INCONSISTENT_SERIES"  # slices cannot be stacked (no geometry)
    TOO_LARGE = "TOO_LARGE"  # dimensions / voxels / instances beyond limits
    ARCHIVE_UNSAFE = "ARCHIVE_UNSAFE"  # zip member escapes the extraction folder
    ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"  # zip bomb: members or uncompressed size over limits
    ARCHIVE_CORRUPT = "ARCHIVE_CORRUPT"
    BAD_GUIDELINE = "BAD_GUIDELINE"  # acquisition guideline file invalid
    BAD_MODEL = "BAD_MODEL"  # model artifact missing metadata or unreadable
    USAGE = "USAGE"
    SYNC_UNREACHABLE = "SYNC_UNREACHABLE"  # mobile unit: the central service did not answer (retried)
    SYNC_REFUSED = "SYNC_REFUSED"  # mobile unit: the central service refused the sync (token, site, unit)
    INTERNAL = "INTERNAL"  # a bug: reported as an error object, still never a traceback


class ScanQCError(Exception):
    """An error with a stable code and a message that names the offending value."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}

    def __repr__(self) -> str:
        return f"ScanQCError({self.code.value}, {self.message!r})"
