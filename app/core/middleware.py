"""Async-native middleware: none of these costs a thread on the request path.

Django's own middleware classes are MiddlewareMixin subclasses, which under
ASGI run process_request and process_response through
sync_to_async(thread_sensitive=True): a thread per request, even for a header.
The drop-in subclasses at the end of this module, which core.handlers uses in
place of Django's classes listed in MIDDLEWARE, run those hooks on the event
loop, which is safe because they do no I/O, and hop to the request's thread
only in the cases that do (a session to save, messages to store, a form to
check for CSRF). Any database access they might still attempt on the loop
raises SynchronousOnlyOperation, as it should.

- HealthCheckMiddleware answers the probes first, before host validation, so a
  kubelet or load balancer probing by IP address is not refused (DisallowedHost).
- StaticFilesMiddleware is WhiteNoise for when no nginx is in front (a container
  host). WhiteNoiseMiddleware itself is sync-only: in the ASGI middleware chain
  Django would adapt it, moving every request through a thread.
- RequestLimitMiddleware turns a request away with a quick 503 when this
  worker already holds WORKER_MAX_REQUESTS_IN_FLIGHT of them.
- DatabaseUnavailableMiddleware turns a database that is down, or a pool with
  no free connection (or too many requests already waiting for one), into a
  quick 503 with Retry-After instead of a 500 page.

https://docs.djangoproject.com/en/6.1/topics/http/middleware/#asynchronous-support
"""

import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as message_middleware
from django.contrib.messages.storage import default_storage
from django.contrib.messages.storage.base import BaseStorage
from django.contrib.sessions import middleware as session_middleware
from django.core.signals import setting_changed
from django.db import InterfaceError, OperationalError
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware import clickjacking, common, csp, csrf, security
from django.utils.functional import SimpleLazyObject, empty
from psycopg_pool import TooManyRequests
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.responders import StaticFile

from core import dbpool, health, jsonlog

logger = logging.getLogger("django.request")
GetResponse = Callable[[HttpRequest], Awaitable[HttpResponse]]
REQUEST_ID = re.compile(r"[0-9A-Za-z-]{8,64}")
# What CsrfViewMiddleware lets through without a token check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


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
    PROBES = {"/healthz": health.healthz, "/readyz": health.readyz}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return await probe(request)
        return await self.get_response(request)


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
        super().__init__(get_response)
        self.limit = settings.WORKER_MAX_REQUESTS_IN_FLIGHT  # 0: no bound
        self.in_flight = 0

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.limit and self.in_flight >= self.limit:
            return unavailable("server busy, try again shortly")
        self.in_flight += 1
        try:
            return await self.get_response(request)
        finally:
            self.in_flight -= 1


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


class NoHopMixin:
    """Run a MiddlewareMixin's hooks on the event loop unless this request needs a thread.

    Subclasses say when a hook does I/O (request_needs_thread,
    response_needs_thread); the sync path (WSGI) is Django's, unchanged.
    """

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(self, request: HttpRequest, response: HttpResponse) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.request_needs_thread(request):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(request, response)
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(NoHopMixin, security.SecurityMiddleware):
    """Headers and the HTTPS redirect: pure computation."""


class CommonMiddleware(NoHopMixin, common.CommonMiddleware):
    """Host validation, APPEND_SLASH (a URL resolve) and Content-Length: pure computation."""


class XFrameOptionsMiddleware(NoHopMixin, clickjacking.XFrameOptionsMiddleware):
    """One header."""


class ContentSecurityPolicyMiddleware(NoHopMixin, csp.ContentSecurityPolicyMiddleware):
    """A lazy nonce on the request, then one or two headers built from settings: pure computation."""


class AuthenticationMiddleware(NoHopMixin, auth_middleware.AuthenticationMiddleware):
    """Sets request.user and request.auser lazily; the lookup happens where they are used."""


class SessionMiddleware(NoHopMixin, session_middleware.SessionMiddleware):
    """Django's session stores touch their storage only to load or save; only saving happens here.

    Another engine (SESSION_ENGINE) may do I/O anywhere, so it runs as Django runs it, in a thread.
    """

    LAZY_ENGINES = frozenset(
        f"django.contrib.sessions.backends.{name}" for name in ("db", "cache", "cached_db", "signed_cookies")
    )

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.lazy_engine = settings.SESSION_ENGINE in self.LAZY_ENGINES

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return not self.lazy_engine

    def response_needs_thread(self, request: HttpRequest, response: HttpResponse) -> bool:
        if not self.lazy_engine:
            return True
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


LAZY_MESSAGE_STORAGES = frozenset(
    f"django.contrib.messages.storage.{name}"
    for name in ("fallback.FallbackStorage", "cookie.CookieStorage", "session.SessionStorage")
)


@functools.cache
def message_storage_is_lazy() -> bool:
    """Whether MESSAGE_STORAGE is one of Django's storages, which do no I/O until used."""
    return settings.MESSAGE_STORAGE in LAZY_MESSAGE_STORAGES


@receiver(setting_changed)
def _message_storage_changed(setting: str, **kwargs: object) -> None:
    if setting == "MESSAGE_STORAGE":
        message_storage_is_lazy.cache_clear()


class MessageMiddleware(NoHopMixin, message_middleware.MessageMiddleware):
    """Messages: Django's storages are built when first used, and store only if read or added.

    Django builds the storage, a cookie signer included, on every request (5 %
    of a plain view's time); most requests never touch it. Left unbuilt, it
    has nothing to store, as BaseStorage.update() would find. Another storage
    (MESSAGE_STORAGE) runs as Django runs it, in a thread.
    """

    def process_request(self, request: HttpRequest) -> None:
        if message_storage_is_lazy():
            request._messages = SimpleLazyObject(partial(default_storage, request))
        else:
            super().process_request(request)

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if hasattr(request, "_messages") and self.built_storage(request) is None:
            return response
        return super().process_response(request, response)

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return not message_storage_is_lazy()

    def response_needs_thread(self, request: HttpRequest, response: HttpResponse) -> bool:
        storage = self.built_storage(request)
        if storage is None:
            return False
        if not isinstance(storage, BaseStorage) or storage.__class__.update is not BaseStorage.update:
            return True  # not Django's: whatever it does, in a thread
        return storage.used or storage.added_new

    @staticmethod
    def built_storage(request: HttpRequest) -> BaseStorage | None:
        """request._messages, unless it is a storage never built (or there is none)."""
        storage = getattr(request, "_messages", None)
        if isinstance(storage, SimpleLazyObject) and storage._wrapped is empty:
            return None
        return storage


class CsrfViewMiddleware(NoHopMixin, csrf.CsrfViewMiddleware):
    """The token check reads the form body only for unsafe methods; those take a thread.

    process_view stays Django's (decorators such as decorator_from_middleware
    call it directly); core.handlers.ASGIHandler registers aprocess_view in its
    place, since Django would run a sync process_view through a thread hop.
    """

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return settings.CSRF_USE_SESSIONS

    def response_needs_thread(self, request: HttpRequest, response: HttpResponse) -> bool:
        return settings.CSRF_USE_SESSIONS and bool(request.META.get("CSRF_COOKIE_NEEDS_UPDATE"))

    async def aprocess_view(
        self, request: HttpRequest, callback: Callable, callback_args: tuple, callback_kwargs: dict
    ) -> HttpResponse | None:
        if request.method in SAFE_METHODS and not settings.CSRF_USE_SESSIONS:
            return self.process_view(request, callback, callback_args, callback_kwargs)
        return await sync_to_async(self.process_view, thread_sensitive=True)(
            request, callback, callback_args, callback_kwargs
        )


def view_hook(middleware: object, is_async: bool) -> Callable:
    """The process_view a handler registers: a drop-in's own async one (aprocess_view) in the async chain."""
    if is_async and isinstance(middleware, NoHopMixin) and hasattr(middleware, "aprocess_view"):
        return middleware.aprocess_view
    return middleware.process_view


# Django's middleware -> its drop-in here, used by core.handlers.ASGIHandler
# when it builds the async chain. settings.MIDDLEWARE keeps Django's paths, so
# Django's own checks (security, CSRF, admin) see exactly what they expect.
NO_HOP_SUBSTITUTES = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
    "django.middleware.csp.ContentSecurityPolicyMiddleware": ContentSecurityPolicyMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
}
