"""Coded errors.

Every failure a user can cause (bad file, bad archive, absurd header, bad guideline) is a
:class:`ScanQCError` with a stable ``code``; front ends turn it into the verdict's
``error`` object or an HTTP 4xx, never a traceback.
"""

from __future__ import annotations

import re
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
    ARCHIVE_ENCRYPTED = "ARCHIVE_ENCRYPTED"  # a password-protected zip member: send the archive unencrypted
    ARCHIVE_NAME_TOO_LONG = "ARCHIVE_NAME_TOO_LONG"  # a zip member path too long to extract (PATH_MAX/NAME_MAX)
    BAD_UID = "BAD_UID"  # a UID that is not digits and dots of at most 64 characters (PS3.5 9.1)
    CHECK_TIMEOUT = "CHECK_TIMEOUT"  # the check ran past its time limit and was stopped
    QUARANTINED = "QUARANTINED"  # the service stopped twice while checking this upload: kept, not checked again
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


# A quoted value in an exception's text: 'x', "x" or b'x' (Python's repr, which parsers and int()/float() use).
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")


def exc_summary(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of a library exception, every quoted value masked.

    Parsers and conversions quote the value they choke on (``could not convert string to float:
    'MRN77310452'`` when a PatientID lands in SliceThickness), and header values can be patient data, so
    they never reach a message, a verdict or a log: the message names the attribute instead where we can.
    """
    text = _QUOTED.sub("'…'", str(exc)).strip()
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__
