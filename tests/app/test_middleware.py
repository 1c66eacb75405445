"""The async request path: no sync-only middleware, static files without a thread per request."""

import asyncio
import gzip
import logging
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib import messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.middleware import SessionMiddleware
from django.contrib.staticfiles.storage import staticfiles_storage
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings
from django.utils.decorators import decorator_from_middleware

from core.dropins import CsrfViewMiddleware, MessageMiddleware
from core.dropins import SessionMiddleware as NoHopSessionMiddleware
from core.handlers import ASGIHandler
from core.middleware import DatabaseUnavailableMiddleware

ADAPTED = "adapted for middleware"


def adaptation_messages(caplog) -> list[str]:
    # Django logs each adaptation while it builds the chain, and only with DEBUG on.
    with override_settings(DEBUG=True), caplog.at_level(logging.DEBUG, logger="django.request"):
        caplog.clear()
        ASGIHandler()  # builds the middleware chain in async mode, as config.asgi does
    return [r.getMessage() for r in caplog.records if ADAPTED in r.getMessage()]


def test_no_middleware_is_adapted_on_the_async_path(caplog):
    assert adaptation_messages(caplog) == []


def test_a_sync_only_middleware_would_be_caught(caplog):
    # The control: WhiteNoise's own middleware is sync-only, and the check sees it.
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, "whitenoise.middleware.WhiteNoiseMiddleware"]):
        messages = adaptation_messages(caplog)
    assert any("WhiteNoiseMiddleware" in m for m in messages), messages


def hashed_admin_css() -> str:
    return staticfiles_storage.url("admin/css/base.css")


def test_static_file_served_by_the_app(asgi):
    url = hashed_admin_css()
    assert url != "/static/admin/css/base.css"  # a hashed name from the manifest
    response = asgi.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert "immutable" in response["Cache-Control"]
    on_disk = Path(settings.STATIC_ROOT, url.removeprefix("/static/")).read_bytes()
    assert response.content == on_disk


def test_static_file_gzipped_when_asked(asgi):
    response = asgi.get(hashed_admin_css(), headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert b"body" in gzip.decompress(response.content)


def test_static_head_has_no_body(asgi):
    response = asgi.head(hashed_admin_css())
    assert response.status_code == 200 and response.content == b""
    assert int(response["Content-Length"]) > 0


def test_static_range_request(asgi):
    response = asgi.get(hashed_admin_css(), headers={"Range": "bytes=0-9"})
    assert response.status_code == 206 and len(response.content) == 10


@pytest.mark.parametrize(
    "path", ["/static/nope.css", "/static/../config/settings.py", "/static/%2e%2e/config/settings.py"]
)
def test_unknown_static_paths_are_404(asgi, path):
    assert asgi.get(path).status_code == 404


def test_database_errors_become_503():
    middleware = DatabaseUnavailableMiddleware(lambda request: HttpResponse())
    request = RequestFactory().get("/books/")
    response = middleware.process_exception(request, OperationalError("connection refused"))
    assert response.status_code == 503
    assert middleware.process_exception(request, ValueError("not a database error")) is None


def messages_request(**cookies: str) -> HttpRequest:
    request = RequestFactory().get("/")
    request.COOKIES.update(cookies)
    SessionMiddleware(lambda request: HttpResponse()).process_request(request)
    return request


def test_message_storage_is_built_only_for_a_request_that_uses_it():
    middleware = MessageMiddleware(lambda request: HttpResponse())
    untouched = messages_request()
    middleware.process_request(untouched)
    response = middleware.process_response(untouched, HttpResponse())
    assert middleware.built_storage(untouched) is None  # no storage, no signer, nothing to store
    assert not middleware.response_needs_thread(untouched, response) and not response.cookies

    adding = messages_request()
    middleware.process_request(adding)
    messages.info(adding, "saved")
    assert middleware.response_needs_thread(adding, HttpResponse())  # storing may touch the session
    response = middleware.process_response(adding, HttpResponse())

    reading = messages_request(messages=response.cookies["messages"].value)
    middleware.process_request(reading)
    assert [m.message for m in messages.get_messages(reading)] == ["saved"]


def test_the_csrf_drop_in_works_as_a_view_decorator():
    # decorator_from_middleware calls process_view itself and awaits nothing,
    # as it does with Django's class: the drop-in's must stay sync.
    @decorator_from_middleware(CsrfViewMiddleware)
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    assert asyncio.run(view(RequestFactory().get("/"))).status_code == 200
    assert asyncio.run(view(RequestFactory().post("/"))).status_code == 403


@pytest.mark.parametrize(
    ("engine", "hops"),
    [("django.contrib.sessions.backends.db", False), ("django.contrib.sessions.backends.file", True)],
)
def test_a_session_engine_not_known_to_be_lazy_runs_in_a_thread(engine, hops):
    # Only Django's lazy stores stay on the event loop; any other may do I/O as it is built.
    with override_settings(SESSION_ENGINE=engine):
        middleware = NoHopSessionMiddleware(lambda request: HttpResponse())
        request = RequestFactory().get("/")
        assert middleware.request_needs_thread(request) is hops
        middleware.process_request(request)
        assert middleware.response_needs_thread(request, HttpResponse()) is hops


@override_settings(MESSAGE_STORAGE="django.contrib.messages.storage.cookie.CookieStorage")
def test_django_message_storage_is_lazy():
    middleware = MessageMiddleware(lambda request: HttpResponse())
    request = messages_request()
    assert not middleware.request_needs_thread(request)
    middleware.process_request(request)
    assert middleware.built_storage(request) is None


class CountingStorage(CookieStorage):
    """A storage of the user's own: Django's cookie storage under another name."""


@override_settings(MESSAGE_STORAGE=f"{__name__}.CountingStorage")
def test_another_message_storage_is_built_as_django_builds_it():
    middleware = MessageMiddleware(lambda request: HttpResponse())
    request = messages_request()
    assert middleware.request_needs_thread(request)
    middleware.process_request(request)
    assert isinstance(middleware.built_storage(request), CountingStorage)
