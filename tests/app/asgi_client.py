"""Driving an ASGI application the way an ASGI server does, for tests: real scope, receive and send.

`asgi_request()` is one request, awaited on the caller's loop. `Client` runs
each request on an event loop of its own with no sync caller above it, as a
server does, through `config.asgi.application` by default: the handler and
middleware that serve production, not Django's test client. Views then use the
pool's connections from their own threads, so tests that touch the database
need `django_db(transaction=True)`.
"""

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

Message = dict[str, Any]


def http_scope(
    path: str,
    query: bytes = b"",
    method: str = "GET",
    headers: tuple = (),
    server: tuple[str, int] = ("testserver", 80),
) -> dict:
    """The scope an ASGI server hands the app for one HTTP request; a Host in `headers` replaces the default."""
    given = {name.lower() for name, _ in headers}
    defaults = [(b"host", b"testserver")]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [*(h for h in defaults if h[0] not in given), *headers],
        "client": ("127.0.0.1", 40000),
        "server": server,
    }


async def asgi_request(
    app: Callable,
    path: str,
    query: bytes = b"",
    method: str = "GET",
    body: bytes = b"",
    headers: tuple = (),
    server: tuple[str, int] = ("testserver", 80),
    client_leaves: bool = False,
    on_send: Callable[[Message], None] | None = None,
) -> list[Message]:
    """One HTTP request through `app`, the ASGI way; returns the messages it sent.

    client_leaves: the client is gone by the time the answer comes, and send()
    raises OSError, as the ASGI spec lets a server do.
    on_send: called with each message the app sends, as it sends it.
    """
    scope = http_scope(path, query, method, headers, server)
    sent: list[Message] = []
    received = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if client_leaves:
            finished.set()  # receive() says so from now on
            raise OSError("the client disconnected")
        sent.append(message)
        if on_send is not None:
            on_send(message)

    await app(scope, receive, send)
    finished.set()
    return sent


def status(messages: list[Message]) -> int:
    return messages[0]["status"]


def body(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages[1:])


class Response:
    """What the server got from the app: status, headers, body, each body message, and how long it took."""

    def __init__(self, messages: list[Message], elapsed: float) -> None:
        self.messages = messages
        self.status_code = status(messages)
        self.header_list = [(k.decode("latin1"), v.decode("latin1")) for k, v in messages[0]["headers"]]
        self.chunks = [m.get("body", b"") for m in messages[1:]]
        self.content = b"".join(self.chunks)
        self.elapsed = elapsed  # until the app returned
        self.cookies: SimpleCookie = SimpleCookie()
        for name, value in self.header_list:
            if name.lower() == "set-cookie":
                self.cookies.load(value)

    def __getitem__(self, name: str) -> str:
        for key, value in self.header_list:
            if key.lower() == name.lower():
                return value
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(key.lower() == name.lower() for key, _ in self.header_list)

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    """Requests through an ASGI app as a server makes them, from sync tests; the API of Django's test client."""

    def __init__(self, app: Callable | None = None) -> None:
        if app is None:
            from config.asgi import application as app
        self.app = app

    def request(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        server: tuple[str, int] = ("testserver", 80),
        on_send: Callable[[Message], None] | None = None,
    ) -> Response:
        sent = tuple((k.lower().encode("latin1"), v.encode("latin1")) for k, v in (headers or {}).items())

        async def run() -> tuple[list[Message], float]:
            started = time.monotonic()
            messages = await asgi_request(self.app, path, query.encode(), method, body, sent, server, on_send=on_send)
            return messages, time.monotonic() - started

        return Response(*asyncio.run(run()))

    def get(self, path: str, data: dict | None = None, **kwargs: Any) -> Response:
        return self.request("GET", path, urlencode(data or {}), **kwargs)

    def head(self, path: str, data: dict | None = None, **kwargs: Any) -> Response:
        return self.request("HEAD", path, urlencode(data or {}), **kwargs)

    def post(self, path: str, data: Any = None, content_type: str = "application/json", **kwargs: Any) -> Response:
        """POST `data`: bytes as they are, anything else as JSON (the only content type the app's API takes)."""
        if data is None:
            data = b""
        elif not isinstance(data, bytes):
            data = json.dumps(data).encode()
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
        return self.request("POST", path, body=data, headers=headers, **kwargs)


async def peak_threads_during(requests: list) -> tuple[int, list]:
    """Run `requests` concurrently, sampling the process's thread count meanwhile."""
    peak = threading.active_count()
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*requests)
    done = True
    await sampler
    return peak, results


def thread_growth(app, path: str, query: bytes, concurrency: int) -> tuple[int, list]:
    """How many threads the process grew by while `concurrency` requests for `path` ran at once, and their answers."""
    from django.core.cache import caches

    # As in a worker, where the startup checks have touched the cache: a cache
    # without connections to close must not cost a thread either.
    caches["default"].get("warm")

    async def run() -> tuple[int, list]:
        before = threading.active_count()
        peak, results = await peak_threads_during([asgi_request(app, path, query) for _ in range(concurrency)])
        return peak - before, results

    return asyncio.run(run())
