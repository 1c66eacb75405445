"""A scripted ASGI client for the differential test: requests driven as a server drives them, clients that leave.

Each request runs in a task of its own, as a server runs it, with the
journal's REQUEST set to its label. A client keeps the cookies it is given,
like a browser, and may leave: once user code fires a probe, after some
chunks of a streamed answer (a server then drops what is still sent), or
before the answer, with send() raising OSError as the ASGI spec allows.
"""

import asyncio
import contextvars
import gc
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie

import differential_journal as journal
from asgi_client import http_scope


@dataclass(frozen=True)
class Leave:
    """How the client goes away; at most one of these."""

    on_probe: str = ""  # once user code fires this probe (after the request body was read)
    after_chunks: int = 0  # after this many body messages of the answer
    # With after_chunks: the send() of the last chunk waits a moment, as a write to a closed
    # socket does, so the disconnect lands there; or, False, returns at once, so the disconnect
    # lands wherever the application next waits (a stream waiting for its next event).
    send_waits: bool = True
    send_raises: bool = False  # before the answer: the server's send() raises OSError


@dataclass
class Exchange:
    """What the client saw of one request, and how the application ended."""

    messages: list[dict]
    error: str  # the exception the application raised, by name ("" if none)
    dropped: int  # messages sent after the client had left


class Client:
    """One user agent: a cookie jar, and requests through `app`, each recorded in `exchanges` by its label."""

    def __init__(self, app: object, exchanges: dict[str, Exchange], cookies: dict[str, str] | None = None) -> None:
        self.app = app
        self.exchanges = exchanges
        self.cookies = dict(cookies or {})

    async def request(
        self,
        label: str,
        path: str,
        *,
        method: str = "GET",
        query: bytes = b"",
        body: bytes = b"",
        content_type: str = "application/x-www-form-urlencoded",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        leave: Leave | None = None,
    ) -> Exchange:
        assert label not in self.exchanges, f"two requests labelled {label!r}"
        context = contextvars.copy_context()
        context.run(journal.REQUEST.set, label)
        headers = (*self._headers(label, body, content_type), *headers)
        scope = http_scope(path, query, method, headers)
        task = asyncio.get_running_loop().create_task(exchange(self.app, scope, body, leave), context=context)
        try:
            result = await task
        finally:
            journal.fire(f"done:{label}")
        self.exchanges[label] = result
        self._keep_cookies(result.messages)
        return result

    def _headers(self, label: str, body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
        # The request id is given, as nginx gives it, so the response's X-Request-ID is the same in both runs.
        request_id = "differential-" + re.sub(r"[^0-9A-Za-z]+", "-", label)
        headers = [(b"host", b"testserver"), (b"x-request-id", request_id[:64].encode())]
        if body:
            headers += [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        if self.cookies:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        return headers

    def _keep_cookies(self, messages: list[dict]) -> None:
        for name, value in response_headers(messages):
            if name.lower() == b"set-cookie":
                for morsel in SimpleCookie(value.decode("latin1")).values():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(morsel.key, None)
                    else:
                        self.cookies[morsel.key] = morsel.value


def response_headers(messages: list[dict]) -> list[tuple[bytes, bytes]]:
    start = next((m for m in messages if m["type"] == "http.response.start"), None)
    return list(start["headers"]) if start else []


async def exchange(app: object, scope: dict, body: bytes, leave: Leave | None) -> Exchange:
    leave = leave or Leave()
    messages: list[dict] = []
    gone = asyncio.Event()
    body_given = False
    dropped = 0

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": body, "more_body": False}
        if leave.on_probe:
            await journal.wait(leave.on_probe)
            gone.set()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal dropped
        if gone.is_set():
            dropped += 1  # as uvicorn does once the client is gone: dropped, no error
            return
        if leave.send_raises:
            gone.set()
            raise OSError("the client disconnected")
        messages.append(message)
        chunks = sum(m["type"] == "http.response.body" for m in messages)
        if leave.after_chunks and chunks == leave.after_chunks:
            gone.set()
            if leave.send_waits:
                await asyncio.sleep(0.05)

    error = ""
    try:
        await app(scope, receive, send)
    except Exception as exc:  # the server would log it; the test compares which
        error = type(exc).__name__
    finally:
        gone.set()
    if leave != Leave():
        await collect_dropped_generators()
    return Exchange(messages, error, dropped)


async def collect_dropped_generators() -> None:
    """Finalise the async generators a request dropped, in its context, before its exchange ends.

    A stream the client left may be dropped at a yield, unclosed (Django closes
    only its outer iterator), so its cleanup runs when it is collected: later,
    in another context, as the collector's timing has it. Collected here, that
    is at the same point in both runs. Each round lets the loop run the aclose()
    it scheduled for a collected generator, which may release the next one.
    """
    for _ in range(4):
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
