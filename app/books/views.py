"""The article's demos, one view each, all async.

Every view here runs on the worker's event loop. Database and other sync-only
code goes through the async ORM (`async for`, `acreate`) or sync_to_async,
never through DJANGO_ALLOW_ASYNC_UNSAFE.
https://docs.djangoproject.com/en/6.1/topics/async/
"""

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.tasks.exceptions import TaskResultDoesNotExist
from django.template.context_processors import csp
from django.template.loader import render_to_string
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csp import csp_override, csp_report_only_override
from django.views.decorators.csrf import csrf_exempt

from books import live
from books.models import TITLE_MAX_LENGTH, Book
from books.tasks import summarize_book
from core import draining, jsonlog

logger = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 10
MAX_EVENTS = 60
DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


async def index(request: HttpRequest) -> HttpResponse:
    """The lessons, and the books live: the latest ones rendered here, newer ones from /books/stream/ (live.js)."""
    # render_to_string without the request: no context processor, so nothing
    # here can reach the database from the event loop. What the page needs is
    # gathered by hand: the CSP nonce for its inline script, the books from the
    # worker's live Hub (its memory: no query, no thread, as the stream sends
    # them), the user through auser() (a query only for a visitor with a
    # session), and for staff the CSRF token of the add form (get_token reads
    # the cookie and sets it on the response).
    shown = 50
    books = await live.hub.latest(shown)
    user = await request.auser()
    can_add = user.is_authenticated and user.is_staff
    context = {
        **csp(request),
        "books": books,
        "shown": shown,
        "last_id": books[0].id if books else 0,  # the stream resumes after it
        "can_add": can_add,
        "username": user.get_username() if can_add else "",
        "csrf_token": get_token(request) if can_add else "",
        "title_max_length": TITLE_MAX_LENGTH,
    }
    return HttpResponse(render_to_string("books/index.html", context))


async def current_datetime(request: HttpRequest) -> HttpResponse:
    """An async function-based view: `async def` is all it takes."""
    now = datetime.datetime.now()
    html = "<html><body>It is now %s.</body></html>" % now
    return HttpResponse(html)


class AsyncView(View):
    """An async class-based view: the handler methods are `async def`."""

    async def get(self, request: HttpRequest) -> HttpResponse:
        raw = request.GET.get("seconds", "1")
        # Plain decimals only: float() alone would also take "nan", "1e1" and "1_0".
        if not DECIMAL.fullmatch(raw) or not 0 <= float(raw) <= MAX_SLEEP_SECONDS:
            return bad_request(f"seconds must be a number from 0 to {MAX_SLEEP_SECONDS}")
        seconds = float(raw)
        # The worker serves other requests while this one waits.
        await asyncio.sleep(seconds)
        return HttpResponse("非同期ビューのレスポンス", content_type="text/plain; charset=utf-8")


def framable_by_any_site(policy: dict) -> dict:
    """The site's Content-Security-Policy with frame-ancestors opened; no policy stays none."""
    return {**policy, "frame-ancestors": ["*"]} if policy else {}


# Django sends the security headers (config/settings.py), so a view can relax
# them for itself: this one may be shown in a frame on any site. The rest of
# the policy stays, in whichever mode DJANGO_CSP_REPORT_ONLY puts it.
# https://docs.djangoproject.com/en/6.1/ref/csp/#decorators
@xframe_options_exempt
@csp_override(framable_by_any_site(settings.SECURE_CSP))
@csp_report_only_override(framable_by_any_site(settings.SECURE_CSP_REPORT_ONLY))
async def embed(request: HttpRequest) -> HttpResponse:
    """The titles as a small read-only HTML page, for other sites to embed (<iframe src=".../books/embed/">)."""
    titles = [title async for title in Book.objects.values_list("title", flat=True)]
    return HttpResponse(render_to_string("books/embed.html", {"titles": titles}))


@method_decorator(csrf_exempt, name="dispatch")  # token-authenticated, no cookies involved
class BookListView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        # `for book in Book.objects.all()` would raise SynchronousOnlyOperation
        # here; `async for` runs the query without blocking the event loop.
        titles = []
        async for book in Book.objects.all():
            titles.append(book.title)
        return HttpResponse(",".join(titles), content_type="text/plain; charset=utf-8")

    async def post(self, request: HttpRequest) -> HttpResponse:
        """A bearer token (the API: no cookies, no CSRF), or a staff session and a CSRF token (the live page)."""
        if "Authorization" not in request.headers:
            user = await request.auser()
            if user.is_authenticated and user.is_staff:
                return await self.post_from_session(request)
        if not settings.API_TOKEN:
            return JsonResponse({"error": "writes are disabled: no API_TOKEN is configured"}, status=403)
        if not _bearer_token_matches(request.headers.get("Authorization", ""), settings.API_TOKEN):
            response = JsonResponse({"error": "missing or wrong bearer token"}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="books"'
            return response
        try:
            data = json.loads(request.body)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; arrays nested
        # thousands deep (well within nginx's 1 MiB) exhaust the parser's recursion.
        except (ValueError, RecursionError):
            return bad_request("body must be JSON")
        if not isinstance(data, dict):
            return bad_request('body must be a JSON object like {"title": "..."}')
        return await _create(data.get("title"))

    async def post_from_session(self, request: HttpRequest) -> HttpResponse:
        # The view is csrf_exempt for the token's sake: a session must pass the
        # check CsrfViewMiddleware would have made (no I/O: the cookie and the form).
        refused = CsrfViewMiddleware(lambda request: HttpResponse()).process_view(request, None, (), {})
        if refused is not None:
            return refused
        if request.content_type == "application/json":
            try:
                data = json.loads(request.body)
            except (ValueError, RecursionError):
                return bad_request("body must be JSON")
            return await _create(data.get("title") if isinstance(data, dict) else None)
        # The live page's form without JavaScript: back to the page, the book on it.
        response = await _create(request.POST.get("title"))
        return HttpResponseRedirect("/", status=303) if response.status_code == 201 else response


async def _create(title: object) -> JsonResponse:
    if not isinstance(title, str) or not title.strip():
        return bad_request("title must be a non-empty string")
    if len(title) > TITLE_MAX_LENGTH:
        return bad_request(f"title must be at most {TITLE_MAX_LENGTH} characters")
    book = await Book.objects.acreate(title=title)
    # Its summary is written in the background (books/tasks.py): aenqueue adds
    # a row to the task queue, in Postgres, and returns; a worker runs it. The
    # request's id goes along, so the task's log lines carry it.
    result = await summarize_book.aenqueue(book.id, request_id=jsonlog.request_id.get())
    await Book.objects.filter(pk=book.pk).aupdate(summary_task_id=result.id)
    return JsonResponse({**_book_json(book), "summary_task_id": result.id}, status=201)


def _book_json(book: Book) -> dict[str, object]:
    return {
        "id": book.id,
        "title": book.title,
        "created_at": book.created_at.isoformat(),
        "summary_status": book.summary_status,
        "summary": book.summary,
        "summary_error": book.summary_error,
    }


async def book_detail(request: HttpRequest, book_id: int) -> JsonResponse:
    """One book as JSON, with its background task's status (READY, RUNNING, SUCCESSFUL, FAILED) and errors."""
    book = await Book.objects.filter(pk=book_id).afirst()
    if book is None:
        return JsonResponse({"error": f"no book with id {book_id}"}, status=404)
    task = None
    if book.summary_task_id:
        try:
            result = await summarize_book.aget_result(book.summary_task_id)
        except TaskResultDoesNotExist:  # pruned (docs/tasks.md): the book keeps the outcome
            pass
        else:
            task = {
                "id": result.id,
                "status": result.status.value,
                "attempts": result.attempts,
                "enqueued_at": result.enqueued_at.isoformat() if result.enqueued_at else None,
                "finished_at": result.finished_at.isoformat() if result.finished_at else None,
                # The exception's class, not its traceback: that stays in the worker's log.
                "errors": [error.exception_class_path for error in result.errors],
            }
    return JsonResponse({**_book_json(book), "task": task})


# --- Live: new books as they are committed (books/live.py) ---------------------------------
MAX_WAIT_SECONDS = 30
DEFAULT_WAIT_SECONDS = 25


def _book_id(raw: str, name: str) -> int | JsonResponse:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return bad_request(f"{name} must be a book id: a whole number, 0 or more")
    return int(raw)


def _stats_event() -> bytes:
    """This worker's open streams and OS threads, what the article promises, as an event."""
    try:
        with open("/proc/self/status") as status:
            threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    except (OSError, StopIteration):
        threads = threading.active_count()
    stats = {"pid": os.getpid(), "streams": len(live.hub.subscribers), "threads": threads}
    return f"event: stats\ndata: {json.dumps(stats)}\n\n".encode()


async def book_stream(request: HttpRequest) -> HttpResponse:
    """Server-Sent Events of new books; resumes after Last-Event-ID (or ?after=), first replaying what was missed."""
    raw = request.headers.get("Last-Event-ID", request.GET.get("after", "0")).strip()
    after = _book_id(raw, "Last-Event-ID" if "Last-Event-ID" in request.headers else "after")
    if isinstance(after, JsonResponse):
        return after
    with_stats = request.GET.get("stats") == "1"
    # The Hub's clock offers the keepalive (and the numbers) to every stream
    # at once: no timer per stream, none re-armed per book.
    clock = (live.Signal.KEEPALIVE, live.Signal.STATS) if with_stats else (live.Signal.KEEPALIVE,)
    subscriber = live.hub.subscribe(clock)
    try:
        missed = await live.hub.backlog(after)
    except BaseException:
        live.hub.unsubscribe(subscriber)
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            opening = [f"retry: {settings.LIVE_RETRY_MS}\n\n".encode()]
            replayed = {book.id for book in missed}
            opening += [book.sse for book in missed]
            if with_stats:
                opening.append(_stats_event())
            yield b"".join(opening)
            while True:
                # Whatever has arrived goes in one write: a stream that falls
                # behind catches up in fewer, larger writes. Bytes, so that
                # Django passes each write on without encoding it again.
                parts = []
                for item in await subscriber.take():
                    if isinstance(item, live.BookEvent):
                        if item.id not in replayed:
                            parts.append(item.sse)
                    elif isinstance(item, live.BookChange):  # a summary written: no id, the resume point stays
                        parts.append(item.sse)
                    elif item == live.Signal.KEEPALIVE:  # a comment: proxies see traffic and keep the stream open
                        parts.append(b": keepalive\n\n")
                    elif item == live.Signal.STATS:
                        parts.append(_stats_event())
                    elif item == live.Signal.OVERFLOW:
                        logger.info("books stream: the client fell behind; ended, it resumes from its last id")
                        yield f"retry: {settings.LIVE_RETRY_MS}\n: behind; reconnect with Last-Event-ID\n\n".encode()
                        return
                    else:  # Signal.DRAIN
                        yield b"".join([*parts, b": the server is restarting; reconnect with Last-Event-ID\n\n"])
                        return
                if parts:
                    yield b"".join(parts)
        finally:
            live.hub.unsubscribe(subscriber)

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def book_updates(request: HttpRequest) -> JsonResponse:
    """Long-polling: the books after ?after=ID, or, when there are none yet, the first within ?wait=S seconds."""
    after = _book_id(request.GET.get("after", "0"), "after")
    if isinstance(after, JsonResponse):
        return after
    raw_wait = request.GET.get("wait", str(DEFAULT_WAIT_SECONDS))
    if not DECIMAL.fullmatch(raw_wait) or not 0 <= float(raw_wait) <= MAX_WAIT_SECONDS:
        return bad_request(f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS}")
    subscriber = live.hub.subscribe()  # before looking: nothing committed in between is missed
    try:
        books = await live.hub.backlog(after)
        if not books and float(raw_wait) > 0:
            try:
                async with asyncio.timeout(float(raw_wait)):
                    while not books:
                        # Books committed together are answered together.
                        items = await subscriber.take()
                        books = [item for item in items if isinstance(item, live.BookEvent) and item.id > after]
                        if not books and isinstance(items[-1], str):  # ending: answer now, the client asks again
                            break
            except TimeoutError:
                pass
    finally:
        live.hub.unsubscribe(subscriber)
    return JsonResponse({"books": [book.as_dict() for book in books], "last_id": books[-1].id if books else after})


def _bearer_token_matches(header: str, expected: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Compare digests in constant time: neither the length nor the content
    # of the expected token leaks through timing.
    return hmac.compare_digest(
        hashlib.sha256(token.strip().encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def sync_only1(data: bytes) -> str:
    """A sync-only function: CPU-heavy work that would stall the event loop."""
    return hashlib.pbkdf2_hmac("sha256", data, b"demo-salt", 20_000).hex()[:16]


@sync_to_async
def sync_only2() -> tuple[int, str | None]:
    """Decorated with sync_to_async: a transaction, which must stay in one thread.

    transaction.atomic() is sync-only: the whole block runs in one worker
    thread, on one connection, so both queries see one transaction.
    """
    with transaction.atomic():
        count = Book.objects.count()
        latest = Book.objects.order_by("-created_at", "-id").values_list("title", flat=True).first()
    return count, latest


async def sync_wrapped(request: HttpRequest) -> HttpResponse:
    # The call form: wrap a sync function, then await the call.
    digest = await sync_to_async(sync_only1)(b"async django")
    # The decorator form: the function is already awaitable.
    count, latest = await sync_only2()
    lines = [
        f"sync_to_async(sync_only1)(): pbkdf2 digest {digest}",
        f"@sync_to_async sync_only2(): {count} books in one transaction, latest {latest!r}",
    ]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")


async def events(request: HttpRequest) -> HttpResponse:
    """Server-Sent Events from an async generator: one event a second."""
    raw = request.GET.get("count", "5")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_EVENTS:
        return bad_request(f"count must be a whole number from 1 to {MAX_EVENTS}")
    count = int(raw)

    async def stream() -> AsyncIterator[str]:
        sent = 0
        try:
            for n in range(1, count + 1):
                # Ends the stream early, and properly, when the server shuts
                # down (core/draining.py); the client reconnects elsewhere.
                if n > 1 and await draining.sleep(1):
                    logger.info("events: server draining, stream ended after %d of %d events", sent, count)
                    return
                payload = {"n": n, "of": count, "time": datetime.datetime.now(datetime.UTC).isoformat()}
                yield f"id: {n}\nevent: tick\ndata: {json.dumps(payload)}\n\n"
                sent = n
        except asyncio.CancelledError:
            # Django cancels the generator when the client goes away.
            logger.info("events: client disconnected after %d of %d events", sent, count)
            raise

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx must pass each event on as it comes, not buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response
