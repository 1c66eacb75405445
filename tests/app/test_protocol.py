"""The worker's HTTP protocol (deploy/gunicorn/protocol.py), served by a real uvicorn on a real socket.

A WriteCounter stands between uvicorn's protocol and the socket's transport
and records every write that reaches the socket; everything else is uvloop,
httptools and the app as in production.
"""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import protocol
import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.handlers import ASGIHandler

App = Callable[[dict, Callable, Callable], Awaitable[None]]


class WriteCounter:
    """The socket's transport, recording each write that reaches it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self.transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def counted(protocol_class: type, writes: list[bytes]) -> type:
    class Counted(protocol_class):
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(WriteCounter(transport, writes))

    return Counted


@asynccontextmanager
async def serving(app: App, protocol_class: type) -> AsyncIterator[int]:
    """uvicorn with `protocol_class` on a free port of 127.0.0.1; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_config=None, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


def run(coroutine: Awaitable) -> Any:
    return uvloop.run(coroutine)


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: testserver", *extra, "", ""]).encode()


@pytest.mark.parametrize(("protocol_class", "writes_per_response"), [(None, 1), (HttpToolsProtocol, 2)])
def test_a_django_response_leaves_in_one_write(protocol_class, writes_per_response):
    # Stock uvicorn writes head and body apart: the counter sees both, so it would see a split.
    protocol_class = protocol_class or protocol.HttpToolsOneWriteProtocol
    writes: list[bytes] = []

    async def two_requests_on_one_connection() -> list[tuple[bytes, bytes]]:
        async with serving(ASGIHandler(), counted(protocol_class, writes)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            responses = []
            for _ in range(2):
                writer.write(get("/now/"))
                responses.append(await read_response(reader))
            writer.close()
            return responses

    responses = run(two_requests_on_one_connection())
    for head, body in responses:
        assert head.startswith(b"HTTP/1.1 200 OK") and b"It is now" in body
    assert len(writes) == 2 * writes_per_response
    assert b"".join(writes) == b"".join(head + body for head, body in responses)


def test_a_streamed_head_is_sent_before_its_body_exists():
    # The app sends the body only once the client has the head: held back, both would wait forever.
    client_has_head = asyncio.Event()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await client_has_head.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n"})

    async def stream() -> tuple[bytes, bytes]:
        async with serving(app, protocol.HttpToolsOneWriteProtocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/events/"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            client_has_head.set()
            body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
            writer.close()
            return head, body

    head, body = run(stream())
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    assert b"data: 1\n\n" in body


def test_a_response_with_connection_close_is_written_whole_before_the_close():
    async def once() -> bytes:
        async with serving(ASGIHandler(), protocol.HttpToolsOneWriteProtocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get("/now/", "Connection: close"))
            answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closed
            writer.close()
            return answer

    answer = run(once())
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b".</body></html>")


def test_a_malformed_request_still_gets_its_400():
    async def garbage() -> bytes:
        async with serving(ASGIHandler(), protocol.HttpToolsOneWriteProtocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer

    assert run(garbage()).startswith(b"HTTP/1.1 400 Bad Request")


def test_a_large_body_meets_backpressure_while_the_client_does_not_read():
    # 64 MiB offered in one turn of the event loop; a reader that waits. Held
    # without limit, the whole body would be accepted (and copied) at once.
    chunk, total = b"x" * 16384, 64 * 1024 * 1024
    accepted = 0

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        nonlocal accepted
        headers = [(b"content-length", str(total).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(total // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            accepted += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    async def slow_reader() -> tuple[int, int]:
        async with serving(app, protocol.HttpToolsOneWriteProtocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
            writer.transport.pause_reading()
            writer.write(get("/big"))
            last = -1
            while accepted == 0 or accepted != last:  # until the server stops accepting more
                last = accepted
                await asyncio.sleep(0.2)
            stalled_at = accepted
            writer.transport.resume_reading()
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            received = 0
            while received < total:
                received += len(await asyncio.wait_for(reader.read(1 << 20), 10))
            writer.close()
            return stalled_at, received

    stalled_at, received = run(slow_reader())
    assert received == total
    assert stalled_at < total // 2, f"{stalled_at} bytes accepted while the client read none"


def test_connections_written_to_in_one_turn_each_get_their_own_bytes_in_one_write():
    # One event to many open streams, as the live Hub sends a book: every
    # connection's three messages leave as one write of its own, in order.
    streams, go = 40, asyncio.Event()
    writes: list[bytes] = []

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        name = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await go.wait()
        for n in range(3):
            await send({"type": "http.response.body", "body": b"%s:%d;" % (name, n), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def fan_out() -> list[bytes]:
        async with serving(app, counted(protocol.HttpToolsOneWriteProtocol, writes)) as port:
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(streams)]
            for n, (reader, writer) in enumerate(clients):
                writer.write(get(f"/s{n}"))
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writes.clear()
            go.set()
            bodies = [await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10) for reader, _ in clients]
            for _, writer in clients:
                writer.close()
            return bodies

    bodies = run(fan_out())
    for n, body in enumerate(bodies):
        assert b"".join(body.split(b"\r\n")[1::2]) == b"/s%d:0;/s%d:1;/s%d:2;" % (n, n, n)
    assert len(writes) == streams  # one each: its three messages and the last chunk, together


def test_one_callback_a_turn_flushes_every_connection():
    class Socket:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.data.append(data)

        def is_closing(self) -> bool:
            return False

    async def turn() -> tuple[int, list[list[bytes]]]:
        loop = asyncio.get_running_loop()
        scheduled = 0
        call_soon = loop.call_soon

        def counting_call_soon(callback: Callable, *args: Any, **kwargs: Any) -> asyncio.Handle:
            nonlocal scheduled
            scheduled += isinstance(getattr(callback, "__self__", None), protocol._Flusher)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counting_call_soon  # type: ignore[method-assign]
        sockets = [Socket() for _ in range(100)]
        transports = [protocol.CoalescingTransport(sock, loop) for sock in sockets]  # type: ignore[arg-type]
        for transport in transports:
            transport.write(b"a")
            transport.write(b"b")
        await asyncio.sleep(0)
        loop.call_soon = call_soon  # type: ignore[method-assign]
        return scheduled, [sock.data for sock in sockets]

    scheduled, written = asyncio.run(turn())
    assert scheduled == 1 and written == [[b"ab"]] * 100
