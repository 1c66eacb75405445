"""The ASGI handler: Django's, minus the thread every request takes for bookkeeping.

Stock Django runs each ASGI request in a ThreadSensitiveContext, and the first
sync hop inside it starts a thread that lives until the request ends. Every
request makes at least two such hops that have nothing to do with the view:
the sync receivers of `request_started` (reset_queries, close_old_connections)
and `response.close()`, which sends `request_finished` (close_old_connections,
close_caches). So an open SSE stream, or an `await asyncio.sleep()`, holds an
OS thread for its whole life.

This handler does the same bookkeeping without the hops:

- Database connections. Only a request's own thread can hold a connection,
  and the thread starts only if the request runs sync code. A request that
  ran none has nothing to give back, so nothing runs. A request that did
  gets close_old_connections() as the last call in its thread, the thread
  that used the connection, as stock Django does: with CONN_MAX_AGE = 0 that
  returns the connection to the pool. However the request ended: queued
  behind sync work still running (a client that went away mid-query cancels
  the view, not the query), and after an exception that skips
  response.close() (a server whose send() raises once the client has gone).
- reset_queries and the start-of-request close_old_connections act on the
  connections of the request's thread, which is new for every request under
  ASGI and so has none: they are skipped.
- close_caches runs only if a cache with connections to close is in use
  (memcached, Redis; the local-memory cache has none), and reset_urlconf (a
  context variable) runs on the event loop.
- Any other receiver of request_started or request_finished, from your code
  or a third-party app, still runs as Django would run it (a sync one in a
  thread); the system check core.W011 points such receivers out.

Every request gets a thread-sensitive context of its own, even when the
server starts the request's task in a copy of an earlier request's context.
Servers do that on keep-alive connections (python/cpython#140947): stock
Django then finds the earlier request's context still set, keeps it, and
every later request on the connection shares one thread for its ORM calls,
and with it one database connection, which the first of them to finish
returns to the pool while the others still use it.

It also builds the middleware chain with core.middleware.NO_HOP_SUBSTITUTES:
Django's session, CSRF, auth, messages, security, common and clickjacking
middleware, as listed in settings.MIDDLEWARE, run through drop-in subclasses
that stay on the event loop unless a request needs a thread.

`__call__()`, `handle()` and `load_middleware()` follow Django 6.1's code line by line
except where marked; tests/app/test_handlers.py fails when Django's change, so
an upgrade gets a review of this file.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
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
from django.http import HttpResponseBase
from django.urls import set_script_prefix, set_urlconf
from django.utils.module_loading import import_string

from core.middleware import NO_HOP_SUBSTITUTES

logger = logging.getLogger("django.request")

# Receivers whose work this handler does itself, without a thread hop.
BOOKKEEPING_RECEIVERS = frozenset({reset_queries, close_old_connections, close_caches, reset_urlconf})


def other_receivers(signal: Signal, sender: type) -> tuple[list, list]:
    """The live (sync, async) receivers of `signal`, without Django's bookkeeping ones."""
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return [r for r in sync_receivers if r not in BOOKKEEPING_RECEIVERS], async_receivers


async def send_to_others(signal: Signal, sender: type, **named: object) -> None:
    """Signal.asend(), for every receiver but the bookkeeping ones; no hop when none is sync."""
    sync_receivers, async_receivers = other_receivers(signal, sender)
    if sync_receivers:

        def send_sync() -> None:
            for receiver in sync_receivers:
                receiver(signal=signal, sender=sender, **named)

        await sync_to_async(send_sync)()
    if async_receivers:
        await asyncio.gather(*(receiver(signal=signal, sender=sender, **named) for receiver in async_receivers))


class RequestProcessed(Exception):
    """Ends a request's task group once the response is sent (Django defines it inside handle())."""


class RequestExecutor(ThreadPoolExecutor):
    """A request's one thread for sync work, started only if the request has any."""

    used = False

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        self.used = True
        return super().submit(fn, *args, **kwargs)


class ASGIHandler(asgi.ASGIHandler):
    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        """Django's ASGIHandler.__call__, with a new thread-sensitive context whatever the task inherited."""
        if scope["type"] != "http":
            raise ValueError("Django can only handle ASGI/HTTP connections, not %s." % scope["type"])
        # Changed: ThreadSensitiveContext() keeps a context it finds already
        # set; given an executor it always starts its own. The executor's one
        # thread starts only if the request makes a sync call, and ends with it.
        executor = RequestExecutor(max_workers=1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # Changed: the request's database connection goes back to the pool
            # in its thread, last (see the module's docstring).
            returned = executor.submit(close_old_connections) if executor.used else None
            executor.shutdown(wait=False)
        if returned is not None:
            await asyncio.wrap_future(returned)  # ended normally: back before the server moves on

    def load_middleware(self, is_async: bool = False) -> None:
        """BaseHandler.load_middleware, with Django's middleware swapped for its no-hop drop-ins."""
        if not is_async:
            return super().load_middleware(is_async)
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []

        handler = convert_exception_to_response(self._get_response_async)
        handler_is_async = True
        for middleware_path in reversed(settings.MIDDLEWARE):
            # The one change: Django's classes are replaced by their drop-ins.
            middleware = NO_HOP_SUBSTITUTES.get(middleware_path) or import_string(middleware_path)
            middleware_can_sync = getattr(middleware, "sync_capable", True)
            middleware_can_async = getattr(middleware, "async_capable", False)
            if not middleware_can_sync and not middleware_can_async:
                raise RuntimeError(
                    f"Middleware {middleware_path} must have at least one of sync_capable/async_capable set to True."
                )
            middleware_is_async = middleware_can_async
            try:
                adapted_handler = self.adapt_method_mode(
                    middleware_is_async,
                    handler,
                    handler_is_async,
                    debug=settings.DEBUG,
                    name=f"middleware {middleware_path}",
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
                raise ImproperlyConfigured(f"Middleware factory {middleware_path} returned None.")

            if hasattr(mw_instance, "process_view"):
                self._view_middleware.insert(0, self.adapt_method_mode(is_async, mw_instance.process_view))
            if hasattr(mw_instance, "process_template_response"):
                self._template_response_middleware.append(
                    self.adapt_method_mode(is_async, mw_instance.process_template_response),
                )
            if hasattr(mw_instance, "process_exception"):
                # The exception-handling stack is still always synchronous for
                # now, so adapt that way.
                self._exception_middleware.append(self.adapt_method_mode(False, mw_instance.process_exception))

            handler = convert_exception_to_response(mw_instance)
            handler_is_async = middleware_is_async

        # Adapt the top of the stack, if needed.
        handler = self.adapt_method_mode(is_async, handler, handler_is_async)
        # We only assign to this when initialization is complete as it is used
        # as a flag for initialization being complete.
        self._middleware_chain = handler

    async def handle(self, scope: dict, receive: object, send: object) -> None:
        """Django's ASGIHandler.handle, with request_started and response.close() done without hops."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return

        with contextlib.closing(body_file):
            set_script_prefix(asgi.get_script_prefix(scope))
            await send_to_others(signals.request_started, self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                body_file.close()
                await self.send_response(error_response, send)
                await self.close_response(error_response)
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

            await self.close_response(response)

    async def close_response(self, response: HttpResponseBase | None) -> None:
        """response.close() and the request_finished bookkeeping, hopping only when there is work."""
        if response is not None:
            # What HttpResponseBase.close() does before sending request_finished:
            # close the request body and any file the response streamed (cheap,
            # in-memory or local file handles).
            for closer in response._resource_closers:
                with contextlib.suppress(Exception):  # as Django does: a sent response stays sent
                    closer()
            response._resource_closers.clear()
            response.closed = True
        if any(type(cache).close is not BaseCache.close for cache in caches.all(initialized_only=True)):
            # Only backends with connections (memcached, Redis) do anything on close.
            await sync_to_async(close_caches, thread_sensitive=True)()
        set_urlconf(None)  # reset_urlconf's work
        await send_to_others(signals.request_finished, self.__class__)
