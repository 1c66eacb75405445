"""The ASGI handler: Django's, minus the thread a request takes only for bookkeeping.

Once a request has a thread (its view, a middleware or a receiver ran sync
code), everything runs as stock Django runs it. docs/async-safety.md ("Threads")
gives each difference and why; tests/app/test_differential.py and Django's own
suite (tests/django_suite) show it behaves like Django. Code copied from Django
is marked where it changes; tests/app/test_upgrade_guard.py fails when the
original does.
"""

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from asgiref.sync import AsyncToSync, SyncToAsync, ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import caches, close_caches
from django.core.cache.backends.base import BaseCache
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, RequestAborted
from django.core.handlers import asgi
from django.core.handlers.base import reset_urlconf
from django.core.handlers.exception import convert_exception_to_response
from django.db import close_old_connections, reset_queries
from django.dispatch import Signal
from django.dispatch.dispatcher import _run_parallel
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf

from core import dropins

logger = logging.getLogger("django.request")


class RequestExecutor(ThreadPoolExecutor):
    """A request's one thread for thread-sensitive sync code, started only if the request has any."""

    submitted = 0  # calls given to the thread
    closed_at = 0  # which of them was response.close(), counted from 1 (0: none)
    # A sync caller above (async_to_sync: tests, mostly): its thread takes
    # thread-sensitive code instead. Looked up once: it is set, or not, above the request.
    under_sync_caller = False

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


_request_executor: contextvars.ContextVar[RequestExecutor] = contextvars.ContextVar("request_executor")


def request_has_thread() -> bool:
    """Whether thread-sensitive code of this request has run, or would run, in a thread that exists.

    True under a sync caller (async_to_sync: tests, mostly), whose thread takes
    that code, and outside ASGIHandler.__call__(), where nothing is known.
    """
    executor = _request_executor.get(None)
    return executor is None or executor.submitted > 0 or executor.under_sync_caller


# Django's receivers of request_started and request_finished, and what each
# comes to for a request without a thread (send_request_signal()): None for
# reset_queries and close_old_connections, since the thread they would run in
# is new and holds no connection and no query log.
async def _close_connected_caches(**kwargs: object) -> None:
    # Only backends with connections (memcached, Redis) do anything on close.
    if any(type(cache).close is not BaseCache.close for cache in caches.all(initialized_only=True)):
        await sync_to_async(close_caches)(**kwargs)


async def _reset_urlconf(**kwargs: object) -> None:
    set_urlconf(None)  # a context variable: the same on the event loop as in a thread


BOOKKEEPING_RECEIVERS = {
    reset_queries: None,
    close_old_connections: None,
    close_caches: _close_connected_caches,
    reset_urlconf: _reset_urlconf,
}
BOOKKEEPING = frozenset(BOOKKEEPING_RECEIVERS)


def other_receivers(signal: Signal, sender: object) -> tuple[list, list]:
    """The live (sync, async) receivers of `signal`, without Django's bookkeeping ones."""
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return [r for r in sync_receivers if r not in BOOKKEEPING], async_receivers


async def send_request_signal(signal: Signal, sender: object, **named: object) -> None:
    """`await signal.asend(sender, **named)`, without the hop when only Django's bookkeeping is sync.

    With a thread already there, or another sync receiver (which needs one),
    it is Signal.asend() itself: every sync receiver in order in the request's
    thread, then the async ones.
    """
    sync_receivers, async_receivers = signal._live_receivers(sender)
    if request_has_thread() or not BOOKKEEPING.issuperset(sync_receivers):
        await signal.asend(sender=sender, **named)
        return
    for receiver in sync_receivers:
        bookkeeping = BOOKKEEPING_RECEIVERS[receiver]
        if bookkeeping is not None:
            await bookkeeping(signal=signal, sender=sender, **named)
    if async_receivers:
        await _run_parallel(*(receiver(signal=signal, sender=sender, **named) for receiver in async_receivers))


def close_needs_thread(response: HttpResponseBase) -> bool:
    """Whether response.close() has more to do than close the request: a class's own close(), a file's, a stream's."""
    if getattr(response.close, "__func__", None) is not HttpResponseBase.close:
        return True
    return any(not isinstance(getattr(closer, "__self__", None), HttpRequest) for closer in response._resource_closers)


def close_and_release(response: HttpResponseBase) -> None:
    """response.close(), then what a request_finished receiver of yours may have taken from the pool."""
    try:
        response.close()
    finally:
        close_old_connections()


class RequestProcessed(Exception):
    """Ends a request's task group once the response is sent (Django defines it inside handle())."""


# Django's handler, which this one stands in for as the sender of the request signals.
StockASGIHandler = asgi.ASGIHandler


class ASGIHandler(StockASGIHandler):
    @property
    def signal_sender(self) -> type:
        """Django sends `self.__class__`; this class sends Django's, so receivers connected to it still fire."""
        return StockASGIHandler if type(self) is ASGIHandler else type(self)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Django's ASGIHandler.__call__, with a thread-sensitive context and thread of the request's own."""
        if scope["type"] != "http":
            raise ValueError("Django can only handle ASGI/HTTP connections, not %s." % scope["type"])
        # Changed: what `async with ThreadSensitiveContext()` does, except that
        # it always starts a new context (stock Django keeps one the task
        # inherited), with an executor whose thread starts only if used.
        context = ThreadSensitiveContext()
        executor = RequestExecutor(max_workers=1, thread_name_prefix="request")
        executor.under_sync_caller = getattr(AsyncToSync.executors, "current", None) is not None
        context_token = SyncToAsync.thread_sensitive_context.set(context)
        executor_token = _request_executor.set(executor)
        SyncToAsync.context_to_thread_executor[context] = executor
        try:
            await self.handle(scope, receive, send)
        finally:
            # Stock Django's ThreadSensitiveContext waits here for the thread's
            # work to end. The call queued last does that, and returns the
            # thread's database connection unless response.close() was last
            # and already did (a request cut off by its client skips it).
            SyncToAsync.context_to_thread_executor.pop(context, None)
            SyncToAsync.thread_sensitive_context.reset(context_token)
            _request_executor.reset(executor_token)
            last = executor.submit(close_old_connections) if executor.submitted > executor.closed_at else None
            executor.shutdown(wait=False)
            if last is not None:
                await asyncio.wrap_future(last)

    def load_middleware(self, is_async: bool = False) -> None:
        """BaseHandler.load_middleware, with Django's middleware swapped for its no-hop drop-ins."""
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []

        get_response = self._get_response_async if is_async else self._get_response
        handler = convert_exception_to_response(get_response)
        handler_is_async = is_async
        for middleware_path in reversed(settings.MIDDLEWARE):
            # Changed: was import_string(middleware_path).
            middleware = dropins.resolve(middleware_path, is_async)
            middleware_can_sync = getattr(middleware, "sync_capable", True)
            middleware_can_async = getattr(middleware, "async_capable", False)
            if not middleware_can_sync and not middleware_can_async:
                raise RuntimeError(
                    "Middleware %s must have at least one of sync_capable/async_capable set to True." % middleware_path
                )
            elif not handler_is_async and middleware_can_sync:
                middleware_is_async = False
            else:
                middleware_is_async = middleware_can_async
            try:
                # Adapt handler, if needed.
                adapted_handler = self.adapt_method_mode(
                    middleware_is_async,
                    handler,
                    handler_is_async,
                    debug=settings.DEBUG,
                    name="middleware %s" % middleware_path,
                )
                mw_instance = middleware(adapted_handler)
            except MiddlewareNotUsed as exc:
                if settings.DEBUG:
                    if str(exc):
                        logger.debug("MiddlewareNotUsed(%r): %s", middleware_path, exc)
                    else:
                        logger.debug("MiddlewareNotUsed: %r", middleware_path)
                continue
            else:
                handler = adapted_handler

            if mw_instance is None:
                raise ImproperlyConfigured("Middleware factory %s returned None." % middleware_path)

            if hasattr(mw_instance, "process_view"):
                self._view_middleware.insert(
                    0,
                    # Changed: was mw_instance.process_view.
                    self.adapt_method_mode(is_async, dropins.view_hook(mw_instance, is_async)),
                )
            if hasattr(mw_instance, "process_template_response"):
                self._template_response_middleware.append(
                    self.adapt_method_mode(is_async, mw_instance.process_template_response),
                )
            if hasattr(mw_instance, "process_exception"):
                # The exception-handling stack is still always synchronous for
                # now, so adapt that way.
                self._exception_middleware.append(
                    self.adapt_method_mode(False, mw_instance.process_exception),
                )

            handler = convert_exception_to_response(mw_instance)
            handler_is_async = middleware_is_async

        # Adapt the top of the stack, if needed.
        handler = self.adapt_method_mode(is_async, handler, handler_is_async)
        # We only assign to this when initialization is complete as it is used
        # as a flag for initialization being complete.
        self._middleware_chain = handler

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Django's ASGIHandler.handle, with the request signals and response.close() through this module."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return

        with contextlib.closing(body_file):
            set_script_prefix(asgi.get_script_prefix(scope))
            # Changed: signals.request_started.asend(sender=self.__class__, ...) -> send_request_signal(...)
            await send_request_signal(signals.request_started, self.signal_sender, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                body_file.close()
                await self.send_response(error_response, send)
                await self.close_response(error_response)  # Changed: was sync_to_async(error_response.close)()
                return

            # Changed: RequestProcessed is a module-level class; Django makes
            # a new class on every request (6 % of a plain view's time).
            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        await self.send_response(response, send)
                        raise RequestProcessed
                except* (RequestProcessed, RequestAborted):
                    pass
            except BaseExceptionGroup as exception_group:
                if len(exception_group.exceptions) == 1:
                    raise exception_group.exceptions[0]  # noqa: B904  (as Django does)
                raise

            # Changed: both through this module.
            if response is None:
                await send_request_signal(signals.request_finished, self.signal_sender)
            else:
                await self.close_response(response)

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        response = await super().run_get_response(request)
        response._handler_class = self.signal_sender  # Changed: Django sets self.__class__
        return response

    async def close_response(self, response: HttpResponseBase) -> None:
        """`await sync_to_async(response.close)()`, on the event loop when it has no work for a thread."""
        if request_has_thread() or close_needs_thread(response):
            executor = _request_executor.get(None)
            before = executor.submitted if executor is not None else 0
            await sync_to_async(close_and_release)(response)
            if executor is not None and executor.submitted > before:
                executor.closed_at = before + 1  # submitted as it started, before any other task could
            return
        # HttpResponseBase.close(), but for how request_finished is sent.
        for closer in response._resource_closers:
            with contextlib.suppress(Exception):
                closer()
        response._resource_closers.clear()
        response.closed = True
        await send_request_signal(signals.request_finished, response._handler_class)
