"""Driving an ASGI application the way an ASGI server does, for tests: real scope, receive and send."""

import asyncio


def http_scope(
    path: str,
    query: bytes = b"",
    method: str = "GET",
    headers: tuple = (),
    server: tuple[str, int] = ("testserver", 80),
) -> dict:
    """The scope an ASGI server hands the app for one HTTP request."""
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
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": server,
    }


async def asgi_request(
    app,
    path: str,
    query: bytes = b"",
    method: str = "GET",
    body: bytes = b"",
    headers: tuple = (),
    server: tuple[str, int] = ("testserver", 80),
    client_leaves: bool = False,
) -> list[dict]:
    """One HTTP request through `app`, the ASGI way; returns the messages it sent.

    client_leaves: the client is gone by the time the answer comes, and send()
    raises OSError, as the ASGI spec lets a server do.
    """
    scope = http_scope(path, query, method, headers, server)
    sent: list[dict] = []
    received = False
    finished = asyncio.Event()

    async def receive() -> dict:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if client_leaves:
            finished.set()  # receive() says so from now on
            raise OSError("the client disconnected")
        sent.append(message)

    await app(scope, receive, send)
    finished.set()
    return sent


def status(messages: list[dict]) -> int:
    return messages[0]["status"]


def body(messages: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages[1:])
