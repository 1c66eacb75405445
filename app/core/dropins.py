"""Django's own middleware, run without a thread: drop-in subclasses, the table of them, and resolve().

The subclasses run Django's hooks on the event loop, since they do no I/O, and hop to the request's
thread only when it needs one (a session to save, messages to store, a form to check for CSRF).
See docs/async-safety.md, "Threads".
"""

import functools
from collections.abc import Callable
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as message_middleware
from django.contrib.messages.storage import default_storage
from django.contrib.messages.storage.base import BaseStorage
from django.contrib.sessions import middleware as session_middleware
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, csp, csrf, security
from django.utils.functional import SimpleLazyObject, empty
from django.utils.module_loading import import_string

from core.middleware import GetResponse

# What CsrfViewMiddleware lets through without a token check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


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


# Django's middleware -> its drop-in here. settings.MIDDLEWARE keeps Django's
# paths, so Django's own checks (security, CSRF, admin) see exactly what they expect.
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


def resolve(path: str, is_async: bool = True) -> type:
    """The class that runs for `path` of MIDDLEWARE: its drop-in in the async chain, else the class itself.

    The one place the substitution happens: core.handlers.ASGIHandler builds its
    chain with it, and the system checks (core/checks.py) inspect what it gives.
    """
    return (is_async and NO_HOP_SUBSTITUTES.get(path)) or import_string(path)
