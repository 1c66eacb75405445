"""The table of the differential test: ordinary user-code patterns, each a scenario of requests.

A row names what it adds (middleware, receivers, settings, database
fixtures) and the events stock Django's run must show, so a row that
stopped exercising its pattern fails instead of comparing two empty runs.
"""

import asyncio

import differential_middleware as mw
from differential_driver import Leave
from differential_harness import Row, Run
from differential_journal import wait
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.signals import got_request_exception, request_finished, request_started
from django.db.models.signals import pre_save

from books.models import Book


def get(*paths: str):
    """One client, one GET after another, each labelled by its path."""

    async def scenario(run: Run) -> None:
        client = run.client()
        for path in paths:
            base, _, query = path.partition("?")
            await client.request(path, base, query=query.encode())

    return scenario


def books() -> dict[str, str]:
    Book.objects.bulk_create([Book(title="Dune"), Book(title="Emma")])
    return {}


def logged_in_user() -> dict[str, str]:
    user = User.objects.create(username="ada")
    session = SessionStore()
    session.update(
        {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )
    session.create()
    return {"sessionid": session.session_key}


async def background_task(run: Run) -> None:
    await run.client().request("request", "/background/")
    await wait("background-done")


async def sync_view_reads_body_after_client_left(run: Run) -> None:
    await run.client().request(
        "post", "/sync/reads-body/", method="POST", body=b"Body data!", leave=Leave(on_probe="view-started")
    )


async def async_view_client_leaves(run: Run) -> None:
    await run.client().request("poll", "/async/waits/", leave=Leave(on_probe="view-started"))


def stream_left_midway(path: str, query: bytes, send_waits: bool = True):
    async def scenario(run: Run) -> None:
        leave = Leave(after_chunks=2, send_waits=send_waits)
        await run.client().request("stream", path, query=query, leave=leave)

    return scenario


async def sessions(run: Run) -> None:
    client = run.client()
    await client.request("write", "/session/write/")
    await client.request("write-async", "/session/write-async/")
    await client.request("read", "/session/read/")
    await client.request("flush", "/session/flush/")
    await client.request("read-after-flush", "/session/read/")


async def messages(run: Run) -> None:
    client = run.client()
    await client.request("add", "/messages/add/")
    await client.request("read", "/messages/read/")
    await client.request("read-again", "/messages/read/")


async def csrf(run: Run) -> None:
    client = run.client()
    await client.request("token", "/csrf/token/")
    token = ((b"x-csrftoken", client.cookies.get("csrftoken", "").encode()),)
    form = {"method": "POST", "body": b"field=sent"}
    await client.request("post-with-token", "/csrf/post/", headers=token, **form)
    await client.request("sync-post-with-token", "/csrf/post-sync/", headers=token, **form)
    await client.request("post-without-token", "/csrf/post/", **form)
    await client.request("post-with-a-wrong-token", "/csrf/post/", headers=((b"x-csrftoken", b"x" * 32),), **form)
    stranger = run.client()
    await stranger.request("post-without-cookie", "/csrf/post/", **form)
    await stranger.request("exempt-post-without-cookie", "/csrf/exempt/", **form)


async def logged_in(run: Run) -> None:
    user = run.client(logged_in=True)
    await user.request("auser", "/whoami/async/")
    await user.request("user", "/whoami/sync/")
    await run.client().request("anonymous", "/whoami/async/")


async def transactions(run: Run) -> None:
    client = run.client()
    await client.request("commit", "/transact/", query=b"title=Kept")
    await client.request("roll-back", "/transact/", query=b"title=Dropped&fail")
    await client.request("read", "/async/books/")


CONCURRENT_PATHS = [
    "/sync/",
    "/async/",
    "/sync/books/",
    "/async/books/",
    "/own-close/async/",
    "/own-close/sync/",
    "/stream/async/",
    "/stream/sync/",
    "/fails/sync/404/",
    "/file/",
    "/session/write/",
    "/session/write-async/",
    "/fails/async/404/",
    "/fails/sync/error/",
    "/fails/async/403/",
    "/template/async/",
    "/whoami/async/",
    "/whoami/sync/",
    "/messages/add/",
    "/transact/?title=Undone&fail",  # a commit would race the book lists
]


async def concurrent(run: Run) -> None:
    requests = []
    for n, path in enumerate(CONCURRENT_PATHS):
        base, _, query = path.partition("?")
        requests.append(run.client(logged_in=n % 2 == 0).request(f"{n:02}{path}", base, query=query.encode()))
    await asyncio.gather(*requests)


async def too_large(run: Run) -> None:
    client = run.client()
    big = b"x" * 1000
    await client.request("sync", "/body/sync/", method="POST", body=big)
    await client.request("async", "/body/async/", method="POST", body=big)
    await client.request("small", "/body/async/", method="POST", body=b"x" * 10)
    await client.request("token", "/csrf/token/")
    token = ((b"x-csrftoken", client.cookies.get("csrftoken", "").encode()),)
    await client.request("form", "/csrf/post/", method="POST", body=b"field=" + big, headers=token)


async def malformed(run: Run) -> None:
    client = run.client()
    await client.request("async", "/async/", query=b"q=caf\xe9")  # Latin-1, not UTF-8
    await client.request("sync", "/sync/", query=b"q=\xff")


async def client_leaves_before_the_answer(run: Run) -> None:
    client = run.client()
    await client.request("async-orm", "/async/books/", leave=Leave(send_raises=True))
    await client.request("sync-orm", "/sync/books/", leave=Leave(send_raises=True))


LIFECYCLE = (
    (request_started, mw.started_sync, None),
    (request_started, mw.started_async, None),
    (request_finished, mw.finished_sync, None),
    (request_finished, mw.finished_async, None),
)
EXCEPTIONS = ((got_request_exception, mw.exception_sync, None), (got_request_exception, mw.exception_async, None))
SAVES = ((pre_save, mw.book_saved, Book),)
ALL_KINDS = tuple(mw.ALL_KINDS)

ROWS = [
    Row("async_view", get("/async/"), must_see=("view",)),
    Row("sync_view", get("/sync/"), must_see=("view",)),
    Row("orm_in_sync_and_async_views", get("/sync/books/", "/async/books/"), setup=books, must_see=("view",)),
    Row(
        "background_task_outlives_its_request",
        background_task,
        receivers=SAVES,
        must_see=("background-sync", "pre_save", "background-count", "background-done"),
    ),
    Row(
        "response_class_with_its_own_close", get("/own-close/async/", "/own-close/sync/"), must_see=("response-close",)
    ),
    Row("sync_view_reads_body_after_client_left", sync_view_reads_body_after_client_left, must_see=("view-body",)),
    Row("async_view_cancelled_when_client_leaves", async_view_client_leaves, must_see=("view-cancelled",)),
    Row("stream_sync_iterator", get("/stream/sync/"), must_see=("parts-finally",)),
    Row("stream_sync_iterator_client_leaves", stream_left_midway("/stream/sync/", b"count=5"), must_see=("part",)),
    Row("stream_async_generator", get("/stream/async/"), must_see=("parts-finally",)),
    Row(
        "stream_async_generator_client_leaves",
        stream_left_midway("/stream/async/", b"count=2&hold"),
        must_see=("parts-exit", "parts-finally"),
    ),
    Row(
        "stream_async_generator_client_leaves_while_it_waits",
        stream_left_midway("/stream/async/", b"count=2&hold", send_waits=False),
        must_see=("parts-exit", "parts-finally"),
    ),
    Row("stream_async_iterator_with_close", get("/stream/async-closable/"), must_see=("parts-close",)),
    Row(
        "stream_async_iterator_with_close_client_leaves",
        stream_left_midway("/stream/async-closable/", b"count=2&hold"),
        must_see=("parts-close",),
    ),
    Row("file_response", get("/file/"), must_see=("file-close",)),
    Row(
        "view_exceptions_and_got_request_exception",
        get("/fails/sync/error/", "/fails/async/error/"),
        receivers=EXCEPTIONS,
        must_see=("got_request_exception:sync", "got_request_exception:async"),
    ),
    Row(
        "http404_and_permission_denied",
        get("/fails/sync/404/", "/fails/async/404/", "/fails/sync/403/", "/fails/async/403/"),
        receivers=EXCEPTIONS,
        must_see=("view",),
    ),
    Row(
        "middleware_of_every_kind",
        get("/sync/", "/async/"),
        middleware=ALL_KINDS,
        must_see=("sync-function:after", "async-function:after", "mixin:process_view", "async-class:after"),
    ),
    Row(
        "middleware_process_template_response",
        get("/template/sync/", "/template/async/"),
        middleware=ALL_KINDS,
        must_see=("mixin:process_template_response",),
    ),
    Row(
        "middleware_process_exception",
        get("/fails/handled/", "/fails/async/error/", "/fails/sync/error/"),
        middleware=ALL_KINDS,
        receivers=EXCEPTIONS,
        must_see=("mixin:process_exception", "got_request_exception:sync"),
    ),
    Row(
        "middleware_answers_early",
        get("/early/", "/early/mixin/"),
        middleware=ALL_KINDS,
        must_see=("async-function:before", "mixin:process_request"),
    ),
    Row(
        "request_signal_receivers_sync_and_async",
        get("/async/", "/sync/"),
        receivers=LIFECYCLE,
        must_see=("started:sync", "started:async", "finished:sync", "finished:async"),
    ),
    Row(
        "request_started_receiver_using_the_database",
        get("/async/", "/sync/books/"),
        receivers=((request_started, mw.started_counts_books, None),),
        setup=books,
        must_see=("started:books",),
    ),
    Row(
        "request_finished_receiver_using_the_database",
        get("/async/", "/sync/books/"),
        receivers=((request_finished, mw.finished_counts_books, None),),
        setup=books,
        must_see=("finished:books",),
        # Stock Django: the receiver runs after Django's own close_old_connections, in the
        # request's thread, which then ends holding the connection it opened.
        stock_leaks=2,
    ),
    Row(
        "receiver_for_djangos_asgi_handler_only",
        get("/async/"),
        receivers=((request_started, mw.started_sync, DjangoASGIHandler),),
        must_see=("started:sync",),
    ),
    Row("sessions_write_read_flush", sessions, must_see=("view",)),
    Row("messages_added_then_read", messages, must_see=("view",)),
    Row("csrf_with_and_without_a_token", csrf, must_see=("view",)),
    Row("logged_in_user_async_and_sync", logged_in, setup=logged_in_user, must_see=("view",)),
    Row("transactions_through_sync_to_async", transactions, receivers=SAVES, must_see=("rolled-back",)),
    Row(
        "context_variables_from_middleware",
        get("/context/async/", "/context/sync/"),
        middleware=tuple(mw.CONTEXT_SETTERS),
        receivers=((request_finished, mw.finished_sync, None), (request_finished, mw.finished_async, None)),
        must_see=("finished:sync", "finished:async"),
    ),
    Row(
        "twenty_concurrent_mixed_requests",
        concurrent,
        setup=lambda: books() | logged_in_user(),
        must_see=("response-close", "parts-finally", "file-close", "rolled-back"),
    ),
    Row("request_body_too_large", too_large, settings={"DATA_UPLOAD_MAX_MEMORY_SIZE": 100}, must_see=("view",)),
    Row("malformed_query_string", malformed, must_see=("signal:request_finished",)),
    Row(
        "client_leaves_before_the_answer",
        client_leaves_before_the_answer,
        setup=books,
        must_see=("view",),
        stock_leaks=2,
    ),
]
