"""Cooperative cancellation of a check running in a worker thread.

Python cannot stop a thread from outside, so a check stops itself: the reading and checking loops call
:func:`checkpoint` between archive members, extracted chunks, files, decoded frames and checks, and it
raises :class:`CheckCancelled` (code ``CHECK_TIMEOUT``) once the token of the running check is cancelled
or past its deadline. The token is per thread (:func:`cancel_scope`), so the one path
(``scanqc.pipeline.check_path``) needs no extra argument and the CLI, which sets none, never stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from scanqc.errors import ErrorCode, ScanQCError


class CheckCancelled(ScanQCError):
    """The running check was stopped (its request timed out, or it ran past its deadline)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CHECK_TIMEOUT, message)


class CancelToken:
    """Set by whoever waits for a check (``cancel()``), or expires by itself (``deadline_s``)."""

    def __init__(self, deadline_s: float | None = None, *, start: bool = True) -> None:
        self._event = threading.Event()
        self._limit_s = deadline_s
        self._deadline: float | None = None
        self.reason = ""
        if start:
            self.start()

    def start(self) -> None:
        """Start the deadline clock (a queued check's limit counts from when it runs)."""
        if self._limit_s and self._deadline is None:
            self._deadline = time.monotonic() + self._limit_s

    def cancel(self, reason: str = "the check was stopped") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        if not self._event.is_set() and self._deadline is not None and time.monotonic() > self._deadline:
            self.cancel(f"the check ran longer than {self._limit_s:g} s and was stopped")
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise CheckCancelled(self.reason)


_local = threading.local()


@contextmanager
def cancel_scope(token: CancelToken | None) -> Iterator[CancelToken | None]:
    """Make ``token`` the one :func:`checkpoint` consults in this thread while the block runs."""
    previous = getattr(_local, "token", None)
    _local.token = token
    try:
        yield token
    finally:
        _local.token = previous


def current_token() -> CancelToken | None:
    """This thread's token (to carry into worker threads with :func:`cancel_scope`)."""
    return getattr(_local, "token", None)


def checkpoint() -> None:
    """Raise :class:`CheckCancelled` if this thread's check has been cancelled; cheap otherwise."""
    token = getattr(_local, "token", None)
    if token is not None:
        token.raise_if_cancelled()
