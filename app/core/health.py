"""Probes: /healthz (liveness) and /readyz (readiness).

Liveness says the worker's event loop answers, and touches nothing else, so a
database outage never gets healthy app containers restarted. Readiness says a
query gets through the pool within READINESS_TIMEOUT seconds; load balancers,
nginx and Kubernetes stop routing to an instance that fails it.
"""

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

# Short enough that an outage shows within 2 s, long enough for a busy database.
READINESS_TIMEOUT = 1.5


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


async def readyz(request: HttpRequest) -> HttpResponse:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT):
            await sync_to_async(_ping_database, thread_sensitive=False)()
    except TimeoutError:
        reason = f"database did not answer within {READINESS_TIMEOUT:g} s"
    except Exception as exc:  # any failure means "not ready", with a reason
        reason = f"database unavailable: {type(exc).__name__}"
    else:
        return HttpResponse("ready\n", content_type="text/plain")
    return JsonResponse({"status": "unavailable", "reason": reason}, status=503)
