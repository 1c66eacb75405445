"""Views of the differential test: ordinary user code, sync and async, each noting what it did.

Routed by differential_urls. Nothing here knows which handler serves it.
"""

import asyncio
import io
import time

from asgiref.sync import sync_to_async
from differential_journal import REQUEST, fire, keep, note, wait
from differential_middleware import CONTEXT, SYNC_CONTEXT, HandledError
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import close_old_connections, transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.template import engines
from django.template.response import TemplateResponse
from django.views.decorators.csrf import csrf_exempt

from books.models import Book


async def async_plain(request: HttpRequest) -> HttpResponse:
    note("view")
    return HttpResponse("async view")


def sync_plain(request: HttpRequest) -> HttpResponse:
    note("view")
    return HttpResponse("sync view")


def sync_books(request: HttpRequest) -> HttpResponse:
    titles = [book.title for book in Book.objects.all()]
    note("view", titles)
    return HttpResponse(",".join(titles))


async def async_books(request: HttpRequest) -> HttpResponse:
    titles = [book.title async for book in Book.objects.all()]
    note("view", titles)
    return HttpResponse(",".join(titles))


async def async_waits(request: HttpRequest) -> HttpResponse:
    """A long poll: the client may leave while it waits."""
    note("view")
    fire("view-started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        note("view-cancelled")
        raise
    return HttpResponse("waited")


# --- A background task that outlives its request -------------------------------


def _background_sync_work() -> None:
    note("background-sync")


async def _background(label: str) -> None:
    try:
        await wait(f"done:{label}")  # the request is over, its answer sent
        await sync_to_async(_background_sync_work)()
        await Book.objects.acreate(title="written in the background")
        note("background-count", await Book.objects.acount())
        # As a background job must: give its connection back, none of Django's bookkeeping covers it.
        await sync_to_async(close_old_connections)()
    finally:
        note("background-done")
        fire("background-done")


async def starts_background_task(request: HttpRequest) -> HttpResponse:
    await sync_to_async(note)("view-sync")
    keep(asyncio.create_task(_background(REQUEST.get())))
    return HttpResponse("started")


# --- A response class with its own close() ---------------------------------------


class ClosingResponse(HttpResponse):
    def close(self) -> None:
        note("response-close")
        super().close()


async def own_close_async(request: HttpRequest) -> HttpResponse:
    note("view")
    return ClosingResponse("closes itself")


def own_close_sync(request: HttpRequest) -> HttpResponse:
    note("view")
    return ClosingResponse("closes itself")


# --- Django's test_cancel_post_request_with_sync_processing, as user code ----------


@csrf_exempt
def sync_reads_body(request: HttpRequest) -> HttpResponse:
    try:
        fire("view-started")
        time.sleep(0.1)  # the client leaves meanwhile
        note("view-body", request.body)
        return HttpResponse("ok")
    except Exception as exc:
        note("view-error", type(exc).__name__)
        raise
    finally:
        fire("view-finished")


# --- Streams -------------------------------------------------------------------------


def _sync_parts(count: int):
    try:
        for n in range(count):
            note("part", n)
            yield f"part {n}\n"
    finally:
        note("parts-finally")


async def _async_parts(count: int, hold: bool):
    # Dropped at a yield by a client that left, this generator is finalised when it is collected,
    # in whatever context the collector runs: its last notes name their request themselves.
    request = REQUEST.get()
    try:
        for n in range(count):
            note("part", n)
            yield f"part {n}\n"
        if hold:
            await asyncio.sleep(30)  # an event stream waiting for its next event
    except BaseException as exc:
        note("parts-exit", type(exc).__name__, request=request)
        raise
    finally:
        note("parts-finally", request=request)


class ClosableParts:
    """An async iterator over a resource with a sync close(), which Django calls when it closes the response.

    Its close() does what such a close() may do: I/O, here a database row.
    """

    def __init__(self, count: int, hold: bool) -> None:
        self.count, self.hold, self.sent = count, hold, 0

    def __aiter__(self) -> "ClosableParts":
        return self

    async def __anext__(self) -> str:
        if self.sent == self.count:
            if not self.hold:
                raise StopAsyncIteration
            await asyncio.sleep(30)
        part = f"part {self.sent}\n"
        note("part", self.sent)
        self.sent += 1
        return part

    def close(self) -> None:
        try:
            Book.objects.create(title=f"stream closed after {self.sent} parts")
        except Exception as exc:  # Django's response.close() swallows it: noted, or it would go unseen
            note("parts-close-failed", type(exc).__name__)
            raise
        note("parts-close")


def _stream_args(request: HttpRequest) -> tuple[int, bool]:
    return int(request.GET.get("count", "3")), "hold" in request.GET


def stream_sync(request: HttpRequest) -> StreamingHttpResponse:
    note("view")
    return StreamingHttpResponse(_sync_parts(_stream_args(request)[0]), content_type="text/plain")


async def stream_async(request: HttpRequest) -> StreamingHttpResponse:
    note("view")
    return StreamingHttpResponse(_async_parts(*_stream_args(request)), content_type="text/plain")


async def stream_async_closable(request: HttpRequest) -> StreamingHttpResponse:
    note("view")
    return StreamingHttpResponse(ClosableParts(*_stream_args(request)), content_type="text/plain")


class NotedFile(io.BytesIO):
    def close(self) -> None:
        note("file-close")
        super().close()


async def file_download(request: HttpRequest) -> FileResponse:
    note("view")
    return FileResponse(NotedFile(b"a line of the report\n" * 40), as_attachment=True, filename="report.txt")


# --- Exceptions ------------------------------------------------------------------------

FAILURES = {"error": lambda: ValueError("the view failed"), "404": lambda: Http404("none"), "403": PermissionDenied}


def sync_fails(request: HttpRequest, kind: str) -> HttpResponse:
    note("view", kind)
    raise FAILURES[kind]()


async def async_fails(request: HttpRequest, kind: str) -> HttpResponse:
    note("view", kind)
    raise FAILURES[kind]()


async def fails_handled(request: HttpRequest) -> HttpResponse:
    note("view")
    raise HandledError("a middleware answers this one")


# --- Template responses ----------------------------------------------------------------

GREETING = "{{ greeting }}, {{ extra|default:'nothing added' }}"


def template_sync(request: HttpRequest) -> TemplateResponse:
    note("view")
    return TemplateResponse(request, engines["django"].from_string(GREETING), {"greeting": "sync hello"})


async def template_async(request: HttpRequest) -> TemplateResponse:
    note("view")
    return TemplateResponse(request, engines["django"].from_string(GREETING), {"greeting": "async hello"})


async def never_reached(request: HttpRequest) -> HttpResponse:
    note("view")  # a middleware answers before this
    return HttpResponse("view")


# --- Sessions, messages, CSRF, the user --------------------------------------------------


def session_write(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    note("view", request.session["visits"])
    return HttpResponse(f"visits {request.session['visits']}")


async def session_write_async(request: HttpRequest) -> HttpResponse:
    visits = await request.session.aget("visits", 0) + 1
    await request.session.aset("visits", visits)
    note("view", visits)
    return HttpResponse(f"visits {visits}")


async def session_read(request: HttpRequest) -> HttpResponse:
    visits = await request.session.aget("visits")
    note("view", visits)
    return HttpResponse(f"visits {visits}")


async def session_flush(request: HttpRequest) -> HttpResponse:
    await request.session.aflush()
    note("view")
    return HttpResponse("flushed")


async def messages_add(request: HttpRequest) -> HttpResponse:
    messages.info(request, "saved")
    messages.warning(request, "check the date", extra_tags="date")
    note("view")
    return HttpResponse("added")


def messages_read(request: HttpRequest) -> HttpResponse:
    seen = [f"{m.level_tag}:{m.message}:{m.extra_tags}" for m in messages.get_messages(request)]
    note("view", seen)
    return HttpResponse("; ".join(seen) or "no messages")


async def csrf_token(request: HttpRequest) -> HttpResponse:
    get_token(request)  # sets the cookie; the token itself varies per run, so it is not in the body
    note("view")
    return HttpResponse("token issued")


async def csrf_post(request: HttpRequest) -> HttpResponse:
    note("view", request.POST.get("field"))
    return HttpResponse("posted")


def csrf_post_sync(request: HttpRequest) -> HttpResponse:
    note("view", request.POST.get("field"))
    return HttpResponse("posted")


csrf_post_exempt = csrf_exempt(csrf_post)


async def whoami_async(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    note("view", user.get_username(), user.is_authenticated)
    return HttpResponse(f"user {user.get_username() or 'anonymous'}")


def whoami_sync(request: HttpRequest) -> HttpResponse:
    note("view", request.user.get_username(), request.user.is_authenticated)
    return HttpResponse(f"user {request.user.get_username() or 'anonymous'}")


# --- Transactions through sync_to_async -----------------------------------------------


class Abandon(Exception):
    pass


def _commit(title: str) -> None:
    with transaction.atomic():
        Book.objects.create(title=title)
        note("in-transaction", title)


def _roll_back(title: str) -> None:
    try:
        with transaction.atomic():
            Book.objects.create(title=title)
            note("in-transaction", title)
            raise Abandon
    except Abandon:
        note("rolled-back", title)


async def transact(request: HttpRequest) -> HttpResponse:
    title = request.GET["title"]
    work = _roll_back if "fail" in request.GET else _commit
    await sync_to_async(work)(title)
    return HttpResponse(f"done {title}")


# --- Context variables set by middleware ------------------------------------------------


async def context_async(request: HttpRequest) -> HttpResponse:
    seen = (CONTEXT.get(), SYNC_CONTEXT.get())
    note("view", *seen)
    return HttpResponse(" / ".join(seen))


def context_sync(request: HttpRequest) -> HttpResponse:
    seen = (CONTEXT.get(), SYNC_CONTEXT.get())
    note("view", *seen)
    return HttpResponse(" / ".join(seen))


# --- Request bodies -----------------------------------------------------------------------


@csrf_exempt
def body_size_sync(request: HttpRequest) -> HttpResponse:
    note("view")
    return HttpResponse(f"{len(request.body)} bytes")


@csrf_exempt
async def body_size_async(request: HttpRequest) -> HttpResponse:
    note("view")
    return HttpResponse(f"{len(request.body)} bytes")
