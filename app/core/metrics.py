"""Prometheus metrics: requests and latency per route, the work in flight, and the database pool.

Every gunicorn worker's numbers, added up by whichever worker answers a scrape on METRICS_PORT, which
nginx never proxies. See docs/observability.md, "Metrics".
https://prometheus.github.io/client_python/multiprocess/
"""

import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, StreamingHttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core import probes
from core.middleware import AsyncMiddleware

REQUESTS = Counter("app_requests_total", "HTTP requests answered, by route", ["method", "route", "status"])
LATENCY = Histogram(
    "app_request_duration_seconds",
    "Time to the response (to its first byte, for a stream), by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Sums over the live workers: connections open, idle in the pool, and requests waiting for one.
POOL_SIZE = Gauge("app_db_pool_connections", "Database connections the pool holds", multiprocess_mode="livesum")
POOL_IDLE = Gauge("app_db_pool_idle_connections", "Pooled connections not in use", multiprocess_mode="livesum")
POOL_WAITING = Gauge("app_db_pool_requests_waiting", "Requests waiting for a connection", multiprocess_mode="livesum")
POOL_REFRESH_SECONDS = 1.0
# One series per live worker ("liveall": a worker's series goes when it exits).
# Requests in flight are the count RequestLimitMiddleware bounds, kept by it: a
# request counts until its view has returned the response (a long-poll while it
# waits, a stream while the view builds it); probes, static files and requests
# turned away never count. A streaming response counts as a stream from its
# first chunk until it ends, the client leaves or the worker stops.
REQUESTS_IN_FLIGHT = Gauge(
    "app_requests_in_flight",
    "Requests this worker has received and not yet begun to answer",
    multiprocess_mode="liveall",
)
STREAMS_OPEN = Gauge(
    "app_streams_open",
    "Streaming responses (Server-Sent Events) this worker is sending",
    multiprocess_mode="liveall",
)


def route_of(request: HttpRequest) -> str:
    """The URL pattern that matched ("books/"), never the raw path: labels stay few."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return match.route
    return request.path_info if request.path_info in probes.PATHS else "unmatched"


def render() -> bytes:
    """Every worker's numbers, and the task queue's when the task worker is installed (read from Postgres now)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessOwn())
    if apps.is_installed("worker"):  # a project may do without tasks (docs/adopt.md)
        from worker.metrics import QueueCollector

        registry.register(QueueCollector())
    return generate_latest(registry)


class _ProcessOwn(Collector):
    """This process's own metrics (one process, no PROMETHEUS_MULTIPROC_DIR), beside the queue's."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class MetricsMiddleware(AsyncMiddleware):
    """Counts and times every request on the event loop; serves /metrics on the metrics port only."""

    def __init__(self, get_response: object) -> None:
        super().__init__(get_response)
        self.metrics_port = str(settings.METRICS_PORT or "")
        self.pool_refreshed = 0.0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.metrics_port and request.META.get("SERVER_PORT") == self.metrics_port:
            if request.path_info != "/metrics":
                return HttpResponseNotFound("metrics only\n", content_type="text/plain")
            body = await sync_to_async(render, thread_sensitive=False)()  # reads the workers' files
            return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
        started = time.perf_counter()
        response = await self.get_response(request)
        if response.streaming:
            count_stream(response)
        route = route_of(request)
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        self.refresh_pool_gauges()
        return response

    def refresh_pool_gauges(self) -> None:
        now = time.monotonic()
        if now - self.pool_refreshed < POOL_REFRESH_SECONDS:
            return
        self.pool_refreshed = now
        pool = connections["default"].pool
        if pool is None:
            return
        stats = pool.get_stats()
        POOL_SIZE.set(stats.get("pool_size", 0))
        POOL_IDLE.set(stats.get("pool_available", 0))
        POOL_WAITING.set(stats.get("requests_waiting", 0))


def count_stream(response: StreamingHttpResponse) -> None:
    """Count a streaming response in STREAMS_OPEN while it is sent (its content, wrapped).

    Counted from the first chunk: a stream never started (its client left first)
    is never counted, so it needs no uncounting. The `finally` runs when the
    stream ends, fails, or is closed or cancelled (a client gone, a worker
    stopping). Each chunk takes two more generator steps: this one, and the
    make_bytes wrapper Django puts around any content it is given (measured:
    docs/performance.md (e)).
    """
    content = response.streaming_content
    response.streaming_content = _counted_async(content) if response.is_async else _counted_sync(content)


async def _counted_async(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    STREAMS_OPEN.inc()
    try:
        async for chunk in content:
            yield chunk
    finally:
        STREAMS_OPEN.dec()


def _counted_sync(content: Iterable[bytes]) -> Iterator[bytes]:
    STREAMS_OPEN.inc()
    try:
        yield from content
    finally:
        STREAMS_OPEN.dec()
