"""Issue 7 (load): nothing of a request may stay in the server after its answer (serving/patches.py).

Two BentoML bugs made the API worker grow with every request: TimeoutMiddleware's uncancelled timer kept each
request's context (and OpenTelemetry span) for ``traffic.timeout`` seconds, and the request metrics added a
Prometheus label set per URL. These tests fail when either fix is gone; none of them asserts a timing.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import re
import uuid
import weakref
from typing import Any

import httpx
import psutil
import pytest

# The module the server loads: importing it applies the fixes, as in every BentoML worker.
import scanqc.serving.service as service

from .conftest import client
from .helpers import ServerProc

_PROBE: contextvars.ContextVar[object] = contextvars.ContextVar("scanqc_test_probe")


class _Marker:
    pass


def _timeout_middleware(app: Any, timeout: float) -> Any:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    return TimeoutMiddleware(app, timeout=timeout)


async def _ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(mw: Any, path: str = "/x") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await mw({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send)
    return sent


def test_patches_are_applied_where_the_server_loads_them() -> None:
    assert service.PATCHES == {"timeout_middleware_timer": True, "request_metrics_endpoint_label": True}


def test_timeout_middleware_releases_each_request_after_its_answer() -> None:
    """With BentoML's middleware as shipped, every request's context stays referenced by a pending timer for
    ``traffic.timeout`` (300 s in the QC service): all 50 markers would still be alive here."""

    async def main() -> tuple[int, int]:
        mw = _timeout_middleware(_ok_app, timeout=300)
        refs: list[weakref.ref[_Marker]] = []

        async def one() -> None:
            marker = _Marker()
            _PROBE.set(marker)  # in this request's context, as the OpenTelemetry span is
            refs.append(weakref.ref(marker))
            sent = await _call(mw)
            assert sent[0]["status"] == 200

        for _ in range(50):
            await asyncio.create_task(one())
        for _ in range(5):  # asyncio drops cancelled timers from its heap on its next iterations
            await asyncio.sleep(0)
        gc.collect()
        pending = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return sum(r() is not None for r in refs), len(pending)

    alive, pending = asyncio.run(main())
    assert alive == 0, f"{alive} of 50 answered requests are still referenced"
    assert pending == 0


def test_timeout_middleware_still_times_out_and_streams() -> None:
    """Same behaviour as BentoML's: 504 when no response has started within the timeout; a response that
    has started (a stream) is not cut; an app that fails before answering fails at once, not at timeout."""

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(30)

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.6)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("app failed before answering")

    async def main() -> None:
        sent = await asyncio.wait_for(_call(_timeout_middleware(slow, timeout=0.2)), 20)
        assert sent[0]["status"] == 504
        sent = await asyncio.wait_for(_call(_timeout_middleware(stream, timeout=0.2)), 20)
        assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"late"
        with pytest.raises(RuntimeError, match="before answering"):
            await asyncio.wait_for(_call(_timeout_middleware(broken, timeout=300)), 20)

    asyncio.run(main())


def _endpoint_labels(metrics: str) -> set[str]:
    return set(re.findall(r'request_total\{[^}]*endpoint="([^"]*)"', metrics))


def test_request_metrics_are_labelled_by_route_not_by_url(secure_server: ServerProc) -> None:
    """BentoML labels its request metrics with the raw path: each series read added a label set for good."""
    uids = [f"1.2.826.0.1.{uuid.uuid4().int % 10**12}" for _ in range(5)]
    junk = f"/no-such-page-{uuid.uuid4().hex[:8]}"
    with client(secure_server, "monitor") as c:
        for uid in uids:
            assert c.get(f"/api/series/{uid}").status_code == 404
        assert c.get(junk).status_code == 404
        assert c.get("/api/dashboard?days=1").status_code == 200
        metrics = httpx.get(secure_server.base + "/metrics", timeout=30).text
    labels = _endpoint_labels(metrics)
    assert not [x for x in labels if any(u in x for u in uids) or junk in x], sorted(labels)
    assert {"/api/series/{uid}", "/{other}", "/api/dashboard", "/api/check"} <= labels, sorted(labels)


def _api_worker(srv: ServerProc) -> psutil.Process:
    for pid in srv.pids():
        p = psutil.Process(pid)
        line = " ".join(p.cmdline())
        if "_bentoml_impl.worker" in line and "scanqc-inference" not in line:
            return p
    raise AssertionError("no API worker in the server's process tree")


def test_api_worker_does_not_keep_requests(secure_server: ServerProc) -> None:
    """3000 probe requests: BentoML's shipped middleware keeps ~4.5 KB of each for 300 s (~13 MiB here);
    with the fix the worker's RSS stays within allocator noise."""
    worker = _api_worker(secure_server)

    def burst(n: int) -> None:
        with httpx.Client(base_url=secure_server.base, timeout=30) as c:
            for _ in range(n):
                assert c.get("/livez").status_code == 200

    burst(500)  # warm: connection, allocator arenas
    before = worker.memory_info().rss
    burst(3000)
    grown_mib = (worker.memory_info().rss - before) / 2**20
    assert grown_mib < 6, f"API worker RSS grew {grown_mib:.1f} MiB over 3000 /livez requests"
