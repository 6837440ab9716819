"""Fixes for BentoML server bugs that scanqc hits, applied when :mod:`scanqc.serving.service` is imported
(so in every BentoML worker: the API worker and the inference worker both import it).

``TimeoutMiddleware`` keeps every request in memory for ``traffic.timeout`` seconds
-----------------------------------------------------------------------------------
BentoML 1.4's ``bentoml._internal.server.http.traffic.TimeoutMiddleware`` (outermost in every service's ASGI
stack; ``traffic.timeout`` > 0) does ``loop.call_later(timeout, ...)`` for each HTTP request and never cancels
the timer. A pending ``asyncio.TimerHandle`` holds its callback's arguments (the request's waiter future) and
a copy of the request's ``contextvars`` context, which holds the request's OpenTelemetry span (BentoML records
a span for every request, sampled or not, for the trace ids in its logs) with its attributes. So each request
stays in memory for ``timeout`` seconds after it was answered: 300 s in the QC service, 120 s in the inference
service. Under steady load the API worker's memory grows linearly for ``timeout`` seconds and then holds at
about rate x timeout x 4.5 KB (plus what the allocator does not give back); found with tracemalloc (live
``TimerHandle``, ``Future``, ``Context`` and ``_Span`` objects, one per request of the last ``timeout`` s),
docs/reliability.md "Load".

The fix cancels the timer as soon as the response has started (or the app has returned), which is when the
original stops caring about it. Everything else is as in BentoML: a request whose response has not started
within ``timeout`` seconds is cancelled and answered 504. One difference: an app that returns or raises
without sending a response is awaited at once (the original waited for the timeout, then left the
exception unretrieved).

The request metrics get one label set per URL
---------------------------------------------
BentoML's ``RunnerTrafficMetricsMiddleware`` (``bentoml._internal.server.http.instruments``) labels
``request_total``, ``request_duration_seconds`` and ``request_in_progress`` with the raw request path, whatever
its ``skip_paths`` say (those only spare ``last_request_timestamp_seconds``). Every ``/api/series/<uid>``,
``/console/<station>``, ... read adds three children (a Histogram child is ~16 values), each one a Python
object in the worker and an entry in the multiprocess mmap files: memory, the files under
``prometheus_multiproc_dir`` and the ``/metrics`` output grew by about 13 KB per series read, for good. The
fix labels HTTP requests with their route template instead (``/api/series/{uid}``); a path that matches no
route is labelled ``/{other}`` (scanners, typos), so the label set is bounded by the route table.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from timeit import default_timer
from typing import Any

log = logging.getLogger("scanqc.serving")

_MARK = "_scanqc_patched"


async def _timeout_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``TimeoutMiddleware.__call__`` with the timer cancelled once it has nothing left to do."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    def started(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    async def _send(message: Any) -> None:
        started()
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    fut.add_done_callback(started)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)
        return None
    finally:
        # Drops the handle's references to the waiter and callback now; asyncio drops the cancelled handle
        # itself (and the context copy it holds) from its timer heap within a few loop iterations.
        timer.cancel()
    await fut  # the response has started: the app finishes it (no timeout on streaming bodies)
    return None


def patch_timeout_middleware() -> bool:
    """Install :func:`_timeout_call` on BentoML's ``TimeoutMiddleware``; True when it is in place.

    If BentoML's class no longer looks like the one this replaces (an upgrade), nothing is patched and a
    warning says so: tests/serving/test_bentoml_patches.py then fails until this is looked at again."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError as exc:  # bentoml without its server (check-only installs never get here)
        log.warning("BentoML TimeoutMiddleware not found (%s); request-timer fix not applied", exc)
        return False
    cls = getattr(traffic, "TimeoutMiddleware", None)
    if cls is None or not callable(getattr(cls, "_set_timer_out", None)):
        log.warning("BentoML's TimeoutMiddleware changed; request-timer fix not applied (serving/patches.py)")
        return False
    if not getattr(cls, _MARK, False):
        cls.__call__ = _timeout_call
        setattr(cls, _MARK, True)
    return True


# -- bounded endpoint labels for BentoML's request metrics ----------------------------------------------
OTHER = "/{other}"
# BentoML's own routes (system routes and the entry service's index/spec pages); the services' API routes
# come from server_context.service_routes and the mounted app's from add_routes().
_SYSTEM_PATHS = {"/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json", "/favicon.ico"}


class EndpointLabels:
    """Request path -> bounded metric label: the path of a route without parameters, the template of a
    parameterised route (``/api/series/{uid}``), else :data:`OTHER`."""

    def __init__(self) -> None:
        self.fixed: set[str] = set(_SYSTEM_PATHS)
        self.templates: list[tuple[re.Pattern[str], str]] = []

    def add_routes(self, routes: Iterable[Any]) -> None:
        """Starlette routes (``web.app.routes``): plain paths are kept, parameterised ones by template."""
        for r in routes:
            path, regex = getattr(r, "path", None), getattr(r, "path_regex", None)
            if not isinstance(path, str) or regex is None:
                continue
            if getattr(r, "param_convertors", None):
                if (regex, path) not in self.templates:
                    self.templates.append((regex, path))
            else:
                self.fixed.add(path)

    def __call__(self, path: str) -> str:
        if path in self.fixed:
            return path
        from bentoml._internal.context import server_context

        if path in (server_context.service_routes or ()):
            return path
        for regex, template in self.templates:
            if regex.match(path):
                return template
        return OTHER


endpoint_label = EndpointLabels()


async def _metrics_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``RunnerTrafficMetricsMiddleware.__call__`` for HTTP with the endpoint label from
    :data:`endpoint_label`; the same metrics and values as BentoML's. Other scopes (websocket, lifespan) go
    to BentoML's own method."""
    if scope["type"] != "http" or scope["path"] == "/metrics":
        return await _ORIGINAL_METRICS_CALL(self, scope, receive, send)
    if not self._is_setup:
        self._setup()
    from bentoml._internal.context import server_context

    endpoint = endpoint_label(scope["path"])
    if not scope["path"].startswith(tuple(self.skip_paths)):
        self.metrics_last_request_timestamp.labels(
            service_name=server_context.bento_name, service_version=server_context.bento_version,
            runner_name=server_context.service_name).set_to_current_time()
    start_time = default_timer()
    status_code = 0

    async def wrapped_send(message: Any) -> None:
        nonlocal status_code
        if message["type"] == "http.response.start":
            status_code = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            labels = {"endpoint": endpoint, "service_name": server_context.bento_name,
                      "service_version": server_context.bento_version, "http_response_code": status_code,
                      "runner_name": server_context.service_name}
            self.metrics_request_total.labels(**labels).inc()
            self.metrics_request_duration.labels(**labels).observe(max(default_timer() - start_time, 0))
        await send(message)

    with self.metrics_request_in_progress.labels(
            endpoint=endpoint, service_name=server_context.bento_name,
            service_version=server_context.bento_version, runner_name=server_context.service_name,
    ).track_inprogress():
        await self.app(scope, receive, wrapped_send)
    return None


_ORIGINAL_METRICS_CALL: Any = None


def patch_request_metrics(routes: Iterable[Any] = ()) -> bool:
    """Label BentoML's request metrics by route template; ``routes`` are the mounted app's routes."""
    global _ORIGINAL_METRICS_CALL
    endpoint_label.add_routes(routes)
    try:
        from bentoml._internal.server.http import instruments
    except ImportError as exc:
        log.warning("BentoML request metrics not found (%s); endpoint-label fix not applied", exc)
        return False
    cls = getattr(instruments, "RunnerTrafficMetricsMiddleware", None)
    if cls is None or not hasattr(cls, "_setup"):
        log.warning("BentoML's RunnerTrafficMetricsMiddleware changed; endpoint-label fix not applied "
                    "(serving/patches.py)")
        return False
    if not getattr(cls, _MARK, False):
        _ORIGINAL_METRICS_CALL = cls.__call__
        cls.__call__ = _metrics_call
        setattr(cls, _MARK, True)
    return True


def apply(routes: Iterable[Any] = ()) -> dict[str, bool]:
    """Apply every fix in this module; name -> applied. ``routes``: the mounted Starlette app's routes."""
    return {"timeout_middleware_timer": patch_timeout_middleware(),
            "request_metrics_endpoint_label": patch_request_metrics(routes)}
