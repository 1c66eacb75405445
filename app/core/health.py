"""Probes: /healthz (liveness) and /readyz (readiness), the paths of core/probes.py.

Liveness touches nothing but the event loop; readiness is one query through the pool, its answer kept
for READINESS_CACHE seconds and shared, so a worker sends the database at most one probe query a second.
See docs/architecture.md, "Probes".
"""

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from core import probes

# A cached answer plus a check that times out: an outage shows within 2 s.
READINESS_CACHE = 1.0
READINESS_TIMEOUT = 1.0

logger = logging.getLogger(__name__)


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


def _ping_database() -> None:
    # Sync database code: it runs in a thread of its own (thread_sensitive=False),
    # so a stuck connection attempt never holds up the request's own thread,
    # and it gives the connection back to the pool from the thread that took it.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


async def _check() -> str | None:
    """None when the database answered in time, else why not (for the log only)."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT):
            await sync_to_async(_ping_database, thread_sensitive=False)()
    except TimeoutError:
        return f"no answer within {READINESS_TIMEOUT:g} s"
    except Exception as exc:  # any failure means "not ready"
        return f"{type(exc).__name__}: {exc}"
    return None


class Readiness:
    """The last check's outcome, fresh for READINESS_CACHE seconds from when it started."""

    def __init__(self) -> None:
        self.started = float("-inf")
        self.failure: str | None = None
        self.running: asyncio.Task | None = None  # the check in flight

    async def failure_reason(self) -> str | None:
        running = self.running
        # A check left by another event loop (tests run several in turn) is not waited for.
        if running is None or running.get_loop() is not asyncio.get_running_loop():
            if time.monotonic() - self.started < READINESS_CACHE:
                return self.failure
            self.started = time.monotonic()
            running = self.running = asyncio.create_task(self._refresh())
        # Shielded: a client that leaves does not cancel the check the others wait for.
        return await asyncio.shield(running)

    async def _refresh(self) -> str | None:
        try:
            failure = await _check()
            if failure is not None and failure != self.failure:
                logger.warning("not ready: database unavailable (%s)", failure)
            elif failure is None and self.failure is not None:
                logger.info("ready: the database answers again")
            self.failure = failure
            return failure
        finally:
            if self.running is asyncio.current_task():
                self.running = None


readiness = Readiness()


async def readyz(request: HttpRequest) -> HttpResponse:
    if await readiness.failure_reason() is None:
        return HttpResponse("ready\n", content_type="text/plain")
    # What failed goes to the log above, not to whoever asked.
    return JsonResponse({"status": "unavailable", "reason": "database unavailable"}, status=503)


# Each probe's view, by path: what core.middleware.HealthCheckMiddleware answers.
VIEWS = {probes.LIVENESS: healthz, probes.READINESS: readyz}
