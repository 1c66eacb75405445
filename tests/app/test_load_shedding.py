"""Load shedding and database timeouts: a worker turns the excess away at once, and no connection waits unbounded."""

import asyncio

import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import RequestFactory, override_settings
from prometheus_client import REGISTRY
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from core.dbpool import forget_timed_out_waiters
from core.middleware import DatabaseUnavailableMiddleware, RequestLimitMiddleware


def exported() -> float:
    """This process's app_requests_in_flight: the count RequestLimitMiddleware keeps, as metrics serve it."""
    return REGISTRY.get_sample_value("app_requests_in_flight")


def test_requests_past_the_bound_get_a_quick_503_with_retry_after(call_async):
    counted = []

    async def scenario() -> tuple[list[HttpResponse], list[HttpResponse], int]:
        release = asyncio.Event()

        async def slow_view(request: HttpRequest) -> HttpResponse:
            await release.wait()
            return HttpResponse("done")

        with override_settings(WORKER_MAX_REQUESTS_IN_FLIGHT=3):
            middleware = RequestLimitMiddleware(slow_view)
        counted.append(exported())
        held = [asyncio.create_task(middleware(RequestFactory().get("/async/"))) for _ in range(3)]
        await asyncio.sleep(0.05)
        # The bound is reached: these are answered while the others are still held.
        turned_away = await asyncio.wait_for(
            asyncio.gather(*(middleware(RequestFactory().get("/async/")) for _ in range(2))), timeout=1
        )
        counted.append(exported())
        release.set()
        served = await asyncio.gather(*held)
        counted.append(exported())
        return turned_away, served, middleware.in_flight

    turned_away, served, in_flight = call_async(scenario)
    before, during, after = counted
    assert (during, after) == (before + 3, before), "the metric is the bound's own count: the held, not the turned away"
    assert [r.status_code for r in turned_away] == [503, 503]
    assert all(r["Retry-After"] == "1" for r in turned_away)
    assert [r.status_code for r in served] == [200, 200, 200]
    assert in_flight == 0


def test_a_failing_request_and_a_stream_give_their_place_back(call_async):
    async def failing(request: HttpRequest) -> HttpResponse:
        raise ValueError("the view failed")

    async def streaming(request: HttpRequest) -> HttpResponse:
        async def forever():
            while True:
                yield "data: tick\n\n"
                await asyncio.sleep(1)

        return StreamingHttpResponse(forever(), content_type="text/event-stream")

    with override_settings(WORKER_MAX_REQUESTS_IN_FLIGHT=1):
        failing_middleware = RequestLimitMiddleware(failing)
        streaming_middleware = RequestLimitMiddleware(streaming)

    async def scenario() -> list[HttpResponse]:
        with pytest.raises(ValueError):
            await failing_middleware(RequestFactory().get("/"))
        # A stream is counted while the view builds it, not while it is sent:
        # a bound of one still lets any number of streams run.
        return [await streaming_middleware(RequestFactory().get("/events/")) for _ in range(3)]

    streams = call_async(scenario)
    assert failing_middleware.in_flight == 0
    assert all(isinstance(s, StreamingHttpResponse) for s in streams)
    assert streaming_middleware.in_flight == 0


def test_the_bound_is_on_by_default_and_above_what_one_worker_streams():
    # tests/test_streaming.py holds 500 requests at once on one worker.
    assert settings.WORKER_MAX_REQUESTS_IN_FLIGHT >= 500
    assert "core.middleware.RequestLimitMiddleware" in settings.MIDDLEWARE
    # After the probes, so they are never turned away.
    assert settings.MIDDLEWARE.index("core.middleware.RequestLimitMiddleware") > settings.MIDDLEWARE.index(
        "core.middleware.HealthCheckMiddleware"
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (TooManyRequests("the pool has already 20 requests waiting"), "server busy, try again shortly"),
        (PoolTimeout("couldn't get a connection after 3.00 sec"), "database unavailable, try again shortly"),
    ],
)
def test_pool_errors_as_django_raises_them_become_503_with_retry_after(error, message):
    # Django wraps psycopg's errors (the pool's included) in its own, as it does on the request path.
    with pytest.raises(OperationalError) as raised, connection.wrap_database_errors:
        raise error
    middleware = DatabaseUnavailableMiddleware(lambda request: HttpResponse())
    response = middleware.process_exception(RequestFactory().get("/books/"), raised.value)
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert message.encode() in response.content


def test_the_pool_bounds_its_queue():
    pool = settings.DATABASES["default"]["OPTIONS"]["pool"]
    assert pool["max_waiting"] > 0
    assert pool["timeout"] <= 5


@pytest.mark.django_db(transaction=True)
def test_connections_carry_the_timeouts_for_a_silent_database():
    with connection.cursor() as cursor:
        server = {}
        for name in ("statement_timeout", "tcp_user_timeout", "tcp_keepalives_idle"):
            cursor.execute(f"SHOW {name}")
            server[name] = cursor.fetchone()[0]
        client = connection.connection.info.get_parameters()
    # The defaults (DB_STATEMENT_TIMEOUT, DB_TCP_USER_TIMEOUT, DB_KEEPALIVES_IDLE), on both sides.
    assert server == {"statement_timeout": "5s", "tcp_user_timeout": "1000", "tcp_keepalives_idle": "5"}
    assert client["keepalives"] == "1" and client["tcp_user_timeout"] == "1000"
    silence = int(client["keepalives_idle"]) + int(client["keepalives_interval"]) * int(client["keepalives_count"])
    assert silence <= 10


@pytest.mark.django_db(transaction=True)
def test_requests_that_gave_up_waiting_do_not_fill_the_queue():
    # psycopg_pool's behaviour that core/dbpool.py works around, on a real pool
    # of one connection: if it changes (or its internals do), this fails.
    kwargs = {**connection.get_connection_params(), "autocommit": True}
    pool = ConnectionPool(kwargs=kwargs, min_size=1, max_size=1, max_waiting=2, timeout=0.2, open=True)
    try:
        pool.wait(timeout=5)
        held = pool.getconn()
        for _ in range(2):
            with pytest.raises(PoolTimeout):
                pool.getconn()
        # Both gave up, yet the pool still counts them: the next request is turned away.
        with pytest.raises(TooManyRequests):
            pool.getconn()
        assert forget_timed_out_waiters(pool) == 2
        assert forget_timed_out_waiters(pool) == 0
        # Now a request waits its turn again (and times out: the connection is still held).
        with pytest.raises(PoolTimeout):
            pool.getconn()
        pool.putconn(held)
        again = pool.getconn()
        pool.putconn(again)
    finally:
        pool.close()
