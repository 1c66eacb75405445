"""Async-native middleware: none of these costs a thread on the request path.

- HealthCheckMiddleware answers the probes first, before host validation, so a
  kubelet or load balancer probing by IP address is not refused (DisallowedHost).
- StaticFilesMiddleware is WhiteNoise for when no nginx is in front (a container
  host). WhiteNoiseMiddleware itself is sync-only: in the ASGI middleware chain
  Django would adapt it, moving every request through a thread.
- DatabaseUnavailableMiddleware turns a database that is down, or a pool with
  no free connection, into a quick 503 instead of a 500 page.

https://docs.djangoproject.com/en/6.1/topics/http/middleware/#asynchronous-support
"""

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.responders import StaticFile

from core import health

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponse]]


class AsyncMiddleware:
    """Base for async-only middleware: Django runs these on the event loop."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        return await self.get_response(request)


class HealthCheckMiddleware(AsyncMiddleware):
    PROBES = {"/healthz": health.healthz, "/readyz": health.readyz}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.PROBES.get(request.path_info)
        if probe is not None and request.method in ("GET", "HEAD"):
            return await probe(request)
        return await self.get_response(request)


class DatabaseUnavailableMiddleware(AsyncMiddleware):
    # Django calls exception hooks synchronously (in a thread) even for async
    # middleware, so this one is a plain function; it runs only on errors.
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            return JsonResponse({"error": "database unavailable, try again shortly"}, status=503)
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
