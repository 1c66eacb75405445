"""The HTTP protocol the Uvicorn worker speaks (workers.py): uvicorn's httptools one, one write per response.

CoalescingTransport sends what one turn of the event loop writes as one write
(at once beyond 64 KiB, so a streamed head still leaves in its turn and a large
body meets backpressure); one callback a turn flushes every connection written
to (_Flusher). Why and what each saves: docs/performance.md ("What changed the
numbers"; (e) for the flush). uvicorn's `http` setting takes the class:
https://www.uvicorn.org/settings/#implementation
"""

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Held data beyond this is written at once, so a large body meets the socket's
# buffer limits, and uvicorn's flow control, as it would without holding.
FLUSH_AT_BYTES = 64 * 1024


class _Flusher:
    """Flushes, at the end of this turn of the event loop, every transport written to in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[CoalescingTransport] = []

    def hold(self, transport: "CoalescingTransport") -> None:
        if not self._held:
            self._loop.call_soon(self._flush_all)
        self._held.append(transport)

    def _flush_all(self) -> None:
        held, self._held = self._held, []
        for transport in held:
            transport.flush()  # in the order they were written to


_flushers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher]" = weakref.WeakKeyDictionary()


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    if loop not in _flushers:
        _flushers[loop] = _Flusher(loop)
    return _flushers[loop]


class CoalescingTransport:
    """A transport whose writes within one turn of the event loop leave as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._flusher = _flusher(loop)
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._flusher.hold(self)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_AT_BYTES:
            self.flush()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def close(self) -> None:
        self.flush()  # a response answered with "connection: close" is written, then closed
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the socket's transport
        return getattr(self._transport, name)


class HttpToolsOneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
