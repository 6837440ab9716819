"""Per-series scratch shared by the checks of one series, safe when the model checks run concurrently."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class SeriesCache(dict):
    """One series' scratch dict, shared by checks that may run at once (the model checks run concurrently).

    :meth:`compute` builds a value once per key, whoever asks first; a second check asking for the same key
    (contrast phase and coverage share the CT's in-plane resampling) waits for it instead of repeating it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def compute(self, key: Any, build: Callable[[], Any]) -> Any:
        if key in self:
            return self[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self:
                self[key] = build()
            return self[key]


def cached(cache: dict[Any, Any] | None, key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` memoised in ``cache`` (once per key even across threads when it is a :class:`SeriesCache`)."""
    if cache is None:
        return build()
    if isinstance(cache, SeriesCache):
        return cache.compute(key, build)
    if key not in cache:
        cache[key] = build()
    return cache[key]
