"""The HTTP check pool: worker threads shared fairly between sites.

A plain thread pool runs jobs in arrival order, so one site that sends a burst of slow uploads holds every
thread and another site's normal upload waits behind it until its request times out (issue 15: four small
zip bombs from one site gave a second site a 504). :class:`FairPool` keeps one queue per site, hands free
threads to the sites in turn (round-robin), and lets one site run at most ``per_site`` checks at once, so
with ``per_site < workers`` a thread is always left for the other sites.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class FairPool:
    def __init__(self, workers: int, per_site: int, name: str = "scanqc-check") -> None:
        self.workers = max(1, int(workers))
        self.per_site = max(1, min(int(per_site), self.workers))
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[Future, Callable[..., Any], tuple[Any, ...]]]] = {}
        self._running: dict[str, int] = {}
        self._turn: deque[str] = deque()  # sites with queued jobs, next to be served first
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def submit(self, site: str, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the check pool is shut down")
            q = self._queues.setdefault(site, deque())
            if site not in self._turn:
                self._turn.append(site)
            q.append((fut, fn, args))
            self._cond.notify()
        return fut

    def running(self, site: str | None = None) -> int:
        with self._cond:
            return self._running.get(site, 0) if site is not None else sum(self._running.values())

    def queued(self, site: str | None = None) -> int:
        with self._cond:
            if site is not None:
                return len(self._queues.get(site, ()))
            return sum(len(q) for q in self._queues.values())

    def _pick(self) -> tuple[str, tuple[Future, Callable[..., Any], tuple[Any, ...]]] | None:
        """The next job: the first site in turn under its cap; that site then goes to the back."""
        for site in list(self._turn):
            if self._running.get(site, 0) >= self.per_site:
                continue
            q = self._queues[site]
            job = q.popleft()
            self._turn.remove(site)
            if q:
                self._turn.append(site)
            else:
                del self._queues[site]
            self._running[site] = self._running.get(site, 0) + 1
            return site, job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                while (item := self._pick()) is None:
                    if self._closed and not self._queues:
                        return
                    self._cond.wait()
            site, (fut, fn, args) = item
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as exc:  # handed to whoever waits on the future
                        fut.set_exception(exc)
            finally:
                with self._cond:
                    self._running[site] -= 1
                    if not self._running[site]:
                        del self._running[site]
                    self._cond.notify_all()

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs; queued ones still run (they are acknowledged uploads)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()
