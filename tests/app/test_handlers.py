"""core.handlers.ASGIHandler, driven as an ASGI server drives it: no thread unless the request needs one."""

import asyncio
import threading
import time

import pytest
from asgi_client import asgi_request, body, peak_threads_during, status, thread_growth
from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.core.handlers import asgi as django_asgi
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import override_settings

from books.models import Book
from core import checks
from core.handlers import ASGIHandler


@pytest.mark.parametrize(("path", "query"), [("/async/", b"seconds=0.3"), ("/now/", b"")])
def test_async_views_take_no_thread(path, query):
    growth, results = thread_growth(ASGIHandler(), path, query, concurrency=50)
    assert all(status(r) == 200 for r in results)
    assert growth < 3, f"{growth} threads for 50 requests in flight {[t.name for t in threading.enumerate()]}"


def test_stock_django_takes_a_thread_per_request():
    # The control: Django's own handler, same requests, one thread each.
    growth, results = thread_growth(django_asgi.ASGIHandler(), "/async/", b"seconds=0.3", concurrency=50)
    assert all(status(r) == 200 for r in results)
    assert growth >= 25


def test_streams_take_no_thread():
    async def run() -> tuple[int, list]:
        before = threading.active_count()
        app = ASGIHandler()
        peak, results = await peak_threads_during([asgi_request(app, "/events/", b"count=2") for _ in range(30)])
        return peak - before, results

    growth, results = asyncio.run(run())
    assert all(status(r) == 200 and body(r).count(b"event: tick") == 2 for r in results)
    assert growth < 3


def pool_stats() -> dict:
    return connections["default"].pool.get_stats()


def assert_every_connection_back(seconds: float = 5) -> dict:
    """The pool's numbers once every connection is back; fails if that takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    stats = pool_stats()
    while time.monotonic() < deadline and stats.get("pool_available") != stats.get("pool_size"):
        time.sleep(0.05)
        stats = pool_stats()
    assert stats["pool_available"] == stats["pool_size"], stats
    return stats


@pytest.fixture
def app_with_a_book() -> ASGIHandler:
    """The handler, one book to read, and a pool the test's own thread holds nothing of."""
    Book.objects.create(title="Pooled")
    connections.close_all()
    return ASGIHandler()


@pytest.mark.django_db(transaction=True)
def test_database_connections_go_back_to_the_pool(app_with_a_book):
    app = app_with_a_book

    async def run() -> list:
        requests = []
        for n in range(60):
            path = ("/books/", "/now/", "/sync-wrapped/", "/readyz")[n % 4]
            requests.append(asgi_request(app, path))
        return await asyncio.gather(*requests)

    results = asyncio.run(run())
    assert all(status(r) == 200 for r in results), [status(r) for r in results]
    assert all(body(r) == b"Pooled" for r in results[::4])
    stats = assert_every_connection_back()
    assert stats.get("requests_waiting", 0) == 0


@pytest.mark.django_db(transaction=True)
def test_a_context_left_from_an_earlier_request_is_not_shared(app_with_a_book):
    # On a keep-alive connection a server may start the next request's task
    # in a copy of the last one's context (python/cpython#140947), with that
    # request's thread-sensitive context still set in it.
    app = app_with_a_book
    leaked = ThreadSensitiveContext()
    threads: set[threading.Thread] = set()  # the objects, kept alive: an ident can be reused

    def note_thread(**kwargs: object) -> None:
        threads.add(threading.current_thread())

    async def run() -> list:
        SyncToAsync.thread_sensitive_context.set(leaked)
        return await asyncio.gather(*(asgi_request(app, "/books/") for _ in range(20)))

    connection_created.connect(note_thread)
    try:
        results = asyncio.run(run())
    finally:
        connection_created.disconnect(note_thread)
    assert all(status(r) == 200 and body(r) == b"Pooled" for r in results)
    # Each request's ORM work ran in a thread of its own, none in the leaked context's.
    assert len(threads) == 20
    assert leaked not in SyncToAsync.context_to_thread_executor
    assert_every_connection_back()


@pytest.mark.django_db(transaction=True)
def test_a_client_that_leaves_before_the_answer_leaks_no_connection(app_with_a_book):
    # The view's query ran; by the time the answer is sent the client has gone,
    # and the server's send() raises, as the ASGI spec allows (OSError). The
    # handler is left by that exception, past response.close().
    app = app_with_a_book

    async def abandoned() -> None:
        with pytest.raises(OSError, match="disconnected"):
            await asgi_request(app, "/books/", client_leaves=True)

    async def run() -> None:
        await asyncio.gather(*(abandoned() for _ in range(5)))

    asyncio.run(run())
    assert_every_connection_back()


@pytest.mark.django_db(transaction=True)
@override_settings(API_TOKEN="t0ken")
def test_writes_through_the_handler():
    connections.close_all()
    app = ASGIHandler()

    async def post(token: bytes) -> list:
        auth = ((b"authorization", b"Bearer " + token),)
        return await asgi_request(app, "/books/", method="POST", body=b'{"title": "Handled"}', headers=auth)

    assert status(asyncio.run(post(b"wrong"))) == 401
    assert status(asyncio.run(post(b"t0ken"))) == 201
    assert list(Book.objects.values_list("title", flat=True)) == ["Handled"]
    connections.close_all()  # the test's own connection, from this thread
    stats = pool_stats()
    assert stats["pool_available"] == stats["pool_size"], stats


def test_sync_orm_on_the_event_loop_still_raises():
    from django.core.exceptions import SynchronousOnlyOperation

    async def mistake() -> int:
        return Book.objects.count()

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(mistake())


def test_blueprint_middleware_passes_the_thread_checks():
    assert checks.middleware_stays_on_the_event_loop(None) == []
    assert checks.request_signals_stay_on_the_event_loop(None) == []


def test_a_hopping_middleware_is_flagged():
    paths = ["django.middleware.gzip.GZipMiddleware", "whitenoise.middleware.WhiteNoiseMiddleware"]
    with override_settings(MIDDLEWARE=paths):
        messages = checks.middleware_stays_on_the_event_loop(None)
    assert [m.id for m in messages] == ["core.W010", "core.W010"]
    assert "MiddlewareMixin" in messages[0].msg and "sync-only" in messages[1].msg


def test_a_sync_request_receiver_is_flagged():
    from django.core.signals import request_started

    def my_receiver(**kwargs: object) -> None:
        pass

    request_started.connect(my_receiver)
    try:
        messages = checks.request_signals_stay_on_the_event_loop(None)
    finally:
        request_started.disconnect(my_receiver)
    assert [m.id for m in messages] == ["core.W011"]
    assert "my_receiver" in messages[0].msg


def test_other_request_receivers_still_run():
    from django.core.signals import request_finished, request_started

    seen: list[str] = []

    def on_start(**kwargs: object) -> None:
        seen.append("started")

    async def on_finish(**kwargs: object) -> None:
        seen.append("finished")

    request_started.connect(on_start)
    request_finished.connect(on_finish)
    try:
        messages = asyncio.run(asgi_request(ASGIHandler(), "/now/"))
    finally:
        request_started.disconnect(on_start)
        request_finished.disconnect(on_finish)
    assert status(messages) == 200
    assert seen == ["started", "finished"]
