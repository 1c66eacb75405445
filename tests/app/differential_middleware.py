"""User middleware and signal receivers of the differential test, one of each kind Django supports.

The rows of differential_rows add these to settings.MIDDLEWARE, or connect
them, as a project would; each notes what it did and what it saw.
"""

import contextvars

from asgiref.sync import markcoroutinefunction
from differential_journal import note
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import async_only_middleware
from django.utils.deprecation import MiddlewareMixin

from books.models import Book

CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("differential_context", default="unset")
SYNC_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("differential_sync_context", default="unset")


class HandledError(Exception):
    """Turned into a response by HookMiddleware.process_exception."""


def sync_function_middleware(get_response):
    def middleware(request: HttpRequest) -> HttpResponse:
        note("sync-function:before")
        response = get_response(request)
        note("sync-function:after", response.status_code)
        return response

    return middleware


@async_only_middleware
def async_function_middleware(get_response):
    async def middleware(request: HttpRequest) -> HttpResponse:
        note("async-function:before")
        if request.path == "/early/":
            return HttpResponse("answered by a middleware", status=299)
        response = await get_response(request)
        response["X-Async-Function"] = "seen"
        note("async-function:after", response.status_code)
        return response

    return middleware


class HookMiddleware(MiddlewareMixin):
    """Every hook a MiddlewareMixin can have; Django runs them in the request's thread."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        note("mixin:process_request")
        if request.path == "/early/mixin/":
            return HttpResponse("answered by process_request", status=298)
        return None

    def process_view(self, request: HttpRequest, view: object, args: tuple, kwargs: dict) -> None:
        note("mixin:process_view", getattr(view, "__name__", "?"), kwargs)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        note("mixin:process_exception", type(exception).__name__)
        if isinstance(exception, HandledError):
            return HttpResponse("handled by process_exception", status=409)
        return None

    def process_template_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        note("mixin:process_template_response")
        response.context_data["extra"] = "added by middleware"
        return response

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        note("mixin:process_response", response.status_code)
        response["X-Mixin"] = "seen"
        return response


class AsyncClassMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        note("async-class:before")
        response = await self.get_response(request)
        note("async-class:after", response.status_code)
        return response


ALL_KINDS = [
    "differential_middleware.sync_function_middleware",
    "differential_middleware.async_function_middleware",
    "differential_middleware.HookMiddleware",
    "differential_middleware.AsyncClassMiddleware",
]


# --- Context variables, set by middleware for the view and the receivers --------------------


@async_only_middleware
def async_context_middleware(get_response):
    async def middleware(request: HttpRequest) -> HttpResponse:
        CONTEXT.set(f"async middleware saw {request.path}")
        return await get_response(request)

    return middleware


class SyncContextMiddleware(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> None:
        SYNC_CONTEXT.set(f"sync middleware saw {request.path}")


CONTEXT_SETTERS = [
    "differential_middleware.async_context_middleware",
    "differential_middleware.SyncContextMiddleware",
]


# --- Receivers ----------------------------------------------------------------------------


def started_sync(sender: object, **kwargs: object) -> None:
    note("started:sync")


async def started_async(sender: object, **kwargs: object) -> None:
    note("started:async")


def finished_sync(sender: object, **kwargs: object) -> None:
    note("finished:sync", CONTEXT.get(), SYNC_CONTEXT.get())


async def finished_async(sender: object, **kwargs: object) -> None:
    note("finished:async", CONTEXT.get(), SYNC_CONTEXT.get())


def started_counts_books(sender: object, **kwargs: object) -> None:
    note("started:books", Book.objects.count())


def finished_counts_books(sender: object, **kwargs: object) -> None:
    note("finished:books", Book.objects.count())


def exception_sync(sender: object, request: HttpRequest, **kwargs: object) -> None:
    note("got_request_exception:sync", sender, request.path)


async def exception_async(sender: object, request: HttpRequest, **kwargs: object) -> None:
    note("got_request_exception:async", sender, request.path)


def book_saved(sender: object, instance: Book, **kwargs: object) -> None:
    note("pre_save", instance.title)
