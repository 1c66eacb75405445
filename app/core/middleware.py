"""Async-native middleware of the blueprint's own: none of these costs a thread on the request path.

Request ids, the probes before the host check, load shedding, quick 503s while the database is away,
static files without nginx; Django's own middleware runs as core/dropins.py's subclasses. See
docs/async-safety.md, "Keeping it that way", and docs/operations.md, "Database timeouts and load shedding".
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from psycopg_pool import TooManyRequests
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.responders import StaticFile

from core import dbpool, health, jsonlog

logger = logging.getLogger("django.request")
GetResponse = Callable[[HttpRequest], Awaitable[HttpResponse]]
REQUEST_ID = re.compile(r"[0-9A-Za-z-]{8,64}")


class AsyncMiddleware:
    """Base for async-only middleware: Django runs these on the event loop."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        return await self.get_response(request)


class RequestIdMiddleware(AsyncMiddleware):
    """The request id nginx made (X-Request-ID), or a new one without nginx: in every log line and the response."""

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        # Taken as given only if it looks like one (nginx: 32 hex digits); never a log-injection vector.
        current = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        jsonlog.request_id.set(current)  # this request's task only; kept for the access line after it
        response = await self.get_response(request)
        response["X-Request-ID"] = current
        return response


class HealthCheckMiddleware(AsyncMiddleware):
    """The probes (core/probes.py), answered here and nowhere else: no URL route leads to them."""

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = health.VIEWS.get(request.path_info)
        if probe is None:
            return await self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        return await probe(request)


# Seconds a client (or a load balancer) is asked to wait before it tries again.
RETRY_AFTER_SECONDS = 1


def unavailable(message: str) -> HttpResponse:
    """A 503 that says when to come back (RFC 9110, section 10.2.3)."""
    response = JsonResponse({"error": message}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class RequestLimitMiddleware(AsyncMiddleware):
    """A bound on the requests this worker holds at once; past it, a quick 503 with Retry-After.

    An overloaded worker that queues every request makes each one slow and
    then fail; turning the excess away at once keeps it answering the rest
    (and its probes, answered before this middleware, so never counted).
    A request counts until its view has returned the response: a stream
    (Server-Sent Events) counts while the view builds it, not while it is
    sent, so long streams never use up the bound. One counter per worker
    process, on its event loop: no lock is needed. uvicorn's own
    limit_concurrency is not used: it counts open connections, idle
    keep-alive ones from nginx and streams included (docs/operations.md).
    """

    def __init__(self, get_response: GetResponse) -> None:
        from core.metrics import REQUESTS_IN_FLIGHT  # core.metrics imports this module

        super().__init__(get_response)
        self.limit = settings.WORKER_MAX_REQUESTS_IN_FLIGHT  # 0: no bound
        self.in_flight = 0
        self.exported = REQUESTS_IN_FLIGHT  # the same count, for autoscalers (app_requests_in_flight)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.limit and self.in_flight >= self.limit:
            return unavailable("server busy, try again shortly")
        self.in_flight += 1
        self.exported.inc()
        try:
            return await self.get_response(request)
        finally:
            self.in_flight -= 1
            self.exported.dec()


class DatabaseUnavailableMiddleware(AsyncMiddleware):
    # Django calls exception hooks synchronously (in a thread) even for async
    # middleware, so this one is a plain function; it runs only on errors.
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            # Django wraps psycopg's errors: the pool's own is the cause.
            if isinstance(exception.__cause__, TooManyRequests):
                dbpool.forget_timed_out_waiters()
                return unavailable("server busy, try again shortly")
            # The cause, for whoever reads the log: the client only learns to retry.
            logger.warning("database unavailable: %s: %s", type(exception.__cause__ or exception).__name__, exception)
            return unavailable("database unavailable, try again shortly")
        return None


class StaticFilesMiddleware(AsyncMiddleware):
    """Serve STATIC_ROOT like WhiteNoiseMiddleware, from the event loop.

    A request for any other path costs one dict lookup. A static file is read
    in a worker thread and sent as a plain response (the files are small and
    hashed; nginx takes this job when it is in front).
    """

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.whitenoise = WhiteNoiseMiddleware(get_response=None)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(settings.STATIC_URL):
            return await self.get_response(request)
        if self.whitenoise.autorefresh:
            static_file = await sync_to_async(self.whitenoise.find_file, thread_sensitive=False)(request.path_info)
        else:
            static_file = self.whitenoise.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self._serve, thread_sensitive=False)(static_file, request)

    @staticmethod
    def _serve(static_file: StaticFile, request: HttpRequest) -> HttpResponse:
        served = static_file.get_response(request.method, request.META)
        body = b""
        if served.file is not None:
            with served.file:
                body = served.file.read()
        response = HttpResponse(body, status=int(served.status))
        del response["Content-Type"]
        for name, value in served.headers:
            response[name] = value
        return response
