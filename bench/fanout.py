"""Fan-out: N subscribers to GET /books/stream/, a book committed every 100 ms; how late, missed, twice.

Run from the repository's root against a running stack; bench/__main__.py runs it as workload
`fanout`. What it measures and how: docs/performance.md, "(e) fan-out".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import struct
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from bench.sample import usage
from harness.stack import docker

try:
    import uvloop
except ImportError:  # run outside bench/run's environment: the standard loop, slower
    uvloop = None  # type: ignore[assignment]

STREAM_PATH = "/books/stream/"
BOOKS_PATH = "/books/"
# The hub's own statements (app/books/live.py): after LISTEN it runs the SELECTs
# of announced books on the same connection, so its last query is one of them.
CONNECTIONS_SQL = """
SELECT count(*) FILTER (WHERE application_name = 'books.live'),
       count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE state = 'idle'), count(*) FILTER (WHERE state LIKE 'idle in transaction%'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
"""
PSQL = 'PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") psql -X -At -F, -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"'
# gunicorn's workers: the children of the master, pid 1 in an app container (as harness/stack.py finds them).
WORKERS_SCRIPT = """
import pathlib
for p in pathlib.Path('/proc').glob('[0-9]*'):
    try:
        stat, cmd = (p / 'stat').read_text(), (p / 'cmdline').read_bytes()
    except OSError:
        continue
    if stat.rsplit(')', 1)[1].split()[1] == '1' and b'gunicorn' in cmd:
        print(p.name)
"""
# A container's CPU time so far: cgroup v2, else v1 (nanoseconds).
CPU_SCRIPT = "cat /sys/fs/cgroup/cpu.stat 2>/dev/null || cat /sys/fs/cgroup/cpuacct/cpuacct.usage"
# What the client reads of each event (books/views.py writes them): the
# id of a book event, and the retry field. A regular expression over every
# complete event at once: the client costs a few µs an event, not tens.
BOOK_IDS = re.compile(rb"^id: ?([0-9]+)\nevent: ?book$", re.MULTILINE)
RETRY = re.compile(rb"^retry: ?([0-9]+)$", re.MULTILINE)
WARM_UP_BOOKS = 20  # before the idle sample: the threads and connections that writes need, already there
CONNECTING_AT_ONCE = 100  # connections being opened at any moment: a crowd, not a flood of SYNs
POSTS_IN_FLIGHT = 20  # a tick finding this many POSTs unanswered is skipped (and counted)


class FanoutError(Exception):
    """The run could not be made as asked (streams not opened, no token): the message says why."""


@dataclass(frozen=True)
class Config:
    port: int
    token: str
    subscribers: int = 1000
    seconds: float = 30.0  # of commits
    interval: float = 0.1  # between commits
    grace: float = 5.0  # after the last commit, for the last events to arrive
    connect_timeout: float = 30.0  # per stream, until its first bytes
    host: str = "127.0.0.1"
    host_header: str = "localhost"
    transport: str = "http1"  # or "h2c": HTTP/2 streams, H2_STREAMS_PER_CONNECTION to a connection
    sample_every: float = 2.0

    def hard_limit(self) -> float:
        """The whole run, connecting included: past it everything is closed, whatever the state."""
        return 60 + self.subscribers / 50 + self.seconds + self.grace + 2 * self.connect_timeout


# --- One subscriber: an HTTP/1.1 connection carrying an event stream ----------------------------------
class Subscriber:
    """What one client received, across its connections: arrival time per book, duplicates."""

    __slots__ = ("after", "arrivals", "duplicates", "last_id", "limit", "reconnects", "retry_s", "unknown")

    def __init__(self, after: int, limit: int) -> None:
        self.after = after  # book ids above this one are ours, at index id - after - 1
        self.limit = limit
        self.arrivals = array("d")
        self.duplicates = 0
        self.unknown = 0  # ids outside the window: not written by this run
        self.last_id = after
        self.retry_s = 2.0
        self.reconnects = 0

    def record(self, book_id: int, now: float) -> None:
        index = book_id - self.after - 1
        if not 0 <= index < self.limit:
            self.unknown += 1
            return
        if index >= len(self.arrivals):
            self.arrivals.extend([0.0] * (index + 1 - len(self.arrivals)))
        if self.arrivals[index]:
            self.duplicates += 1
        else:
            self.arrivals[index] = now
        self.last_id = max(self.last_id, book_id)


class StreamProtocol(asyncio.Protocol):
    """Parses one response: status and headers, chunked transfer coding, then the events."""

    def __init__(self, subscriber: Subscriber, started: asyncio.Future[None], closed: asyncio.Future[None]) -> None:
        self.subscriber = subscriber
        self.started, self.closed = started, closed
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.events = bytearray()
        self.headers_done = False
        self.chunked = False
        self.need = 0  # bytes left in the current chunk
        self.crlf = 0  # bytes left of the CRLF after it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(f"closed before the stream started ({exc or 'EOF'})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.headers_done:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self.raw[:end]).decode("latin-1"), bytes(self.raw[end + 4 :])
            self.raw.clear()
            self.headers_done = True
            status = head.split("\r\n", 1)[0]
            if status.split(" ")[1:2] != ["200"]:
                self.started.set_exception(ConnectionError(f"answered {status!r}, not 200"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.chunked = "transfer-encoding: chunked" in head.lower()
        if self.chunked:
            self._dechunk(data)
        else:
            self.events += data
        self._parse_events(now)

    def _dechunk(self, data: bytes) -> None:
        buf = self.raw
        buf += data
        pos = 0
        while pos < len(buf):
            if self.need:
                take = min(self.need, len(buf) - pos)
                self.events += buf[pos : pos + take]
                pos += take
                self.need -= take
                if not self.need:
                    self.crlf = 2
            elif self.crlf:
                skip = min(self.crlf, len(buf) - pos)
                pos += skip
                self.crlf -= skip
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:  # the last chunk: the server ended the stream
                    self.transport.close()  # type: ignore[union-attr]
                    break
                self.need = size
        del buf[:pos]

    def _parse_events(self, now: float) -> None:
        """The complete events in self.events: the books' ids and any retry field (the server's format, one pass)."""
        events = self.events
        end = events.rfind(b"\n\n") + 2
        if end >= 2:
            block = bytes(events[:end])
            del events[:end]
            for book_id in BOOK_IDS.findall(block):
                self.subscriber.record(int(book_id), now)
            if b"retry:" in block:
                self.subscriber.retry_s = int(RETRY.findall(block)[-1]) / 1000
        if not self.started.done():  # the first bytes of the body: the view has subscribed
            self.started.set_result(None)


def stream_request(config: Config, subscriber: Subscriber, resume: bool) -> bytes:
    target = STREAM_PATH if resume else f"{STREAM_PATH}?after={subscriber.after}"
    resume_header = f"Last-Event-ID: {subscriber.last_id}\r\n" if resume else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {config.host_header}:{config.port}\r\nAccept: text/event-stream\r\n"
        f"Cache-Control: no-cache\r\n{resume_header}\r\n"
    ).encode()


class Http1:
    """One HTTP/1.1 connection per stream, as browsers open them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.streams: list[StreamProtocol] = []

    async def open(self, subscriber: Subscriber, resume: bool = False) -> StreamProtocol:
        config, loop = self.config, asyncio.get_running_loop()
        started, closed = loop.create_future(), loop.create_future()
        transport, protocol = await loop.create_connection(
            lambda: StreamProtocol(subscriber, started, closed), config.host, config.port
        )
        self.streams.append(protocol)
        try:
            transport.write(stream_request(config, subscriber, resume))
            await asyncio.wait_for(started, config.connect_timeout)
        except BaseException:
            transport.close()
            raise
        return protocol

    def close_all(self) -> None:
        for stream in self.streams:
            stream.close()


# --- HTTP/2 without TLS (h2c, prior knowledge): many streams on one connection --------------------------------
# nginx speaks it on its plain port (nginx/site/tls-off.conf), as a TLS proxy or
# CDN in front would; nginx still holds one connection to the app per stream.
H2_STREAMS_PER_CONNECTION = 100  # nginx allows 128 (http2_max_concurrent_streams)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
STATUS_200 = 0x88  # HPACK: static table entry 8, ":status: 200"
MAX_WINDOW = 2**31 - 1
FRAME_HEADER = struct.Struct(">HBBBL")  # a 24-bit length as 16 + 8 bits, type, flags, stream id


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal without indexing, new name, no Huffman coding (RFC 7541 6.2.2): short values only."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class H2Stream(StreamProtocol):
    """One stream of an H2Connection: the connection hands it its DATA."""

    def __init__(self, connection: H2Connection, stream_id: int, subscriber: Subscriber) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(subscriber, loop.create_future(), loop.create_future())
        self.connection, self.stream_id = connection, stream_id

    def close(self) -> None:
        self.connection.cancel(self)

    def ended(self, why: str) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(f"stream ended before it started ({why})"))
        if not self.closed.done():
            self.closed.set_result(None)


class H2Connection(asyncio.Protocol):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.next_id = 1
        self.opened = 0
        self.lost = False
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Windows as large as allowed: no WINDOW_UPDATE needed for the rest of the run.
        no_push = (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
        window = (4).to_bytes(2, "big") + MAX_WINDOW.to_bytes(4, "big")
        update = h2_frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - 65535).to_bytes(4, "big"))
        transport.write(H2_PREFACE + h2_frame(SETTINGS, 0, 0, no_push + window) + update)  # type: ignore[attr-defined]

    def start(self, subscriber: Subscriber, resume: bool) -> H2Stream:
        config, stream_id = self.config, self.next_id
        self.next_id += 2
        self.opened += 1
        stream = H2Stream(self, stream_id, subscriber)
        self.streams[stream_id] = stream
        target = STREAM_PATH if resume else f"{STREAM_PATH}?after={subscriber.after}"
        block = b"\x82\x86" + hpack_literal(b":path", target.encode())  # :method GET, :scheme http
        block += hpack_literal(b":authority", f"{config.host_header}:{config.port}".encode())
        block += hpack_literal(b"accept", b"text/event-stream")
        if resume:
            block += hpack_literal(b"last-event-id", str(subscriber.last_id).encode())
        self.transport.write(h2_frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))  # type: ignore[union-attr]
        return stream

    def cancel(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) and not self.lost:
            self.transport.write(h2_frame(RST_STREAM, 0, stream.stream_id, (8).to_bytes(4, "big")))  # type: ignore[union-attr]
        stream.ended("cancelled")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for stream in list(self.streams.values()):
            stream.ended(f"connection lost: {exc or 'EOF'}")
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buffer
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 9:
            high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(buf, pos)
            length = high << 8 | low
            if size - pos < 9 + length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self.frame(kind, flags, stream_id & MAX_WINDOW, payload, now)
        del buf[:pos]

    def frame(self, kind: int, flags: int, stream_id: int, payload: bytes, now: float) -> None:
        stream = self.streams.get(stream_id)
        if kind in (DATA, HEADERS) and flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if kind == DATA and stream:
            stream.events += payload
            stream._parse_events(now)
        elif kind == HEADERS and stream:
            if flags & PRIORITY:
                payload = payload[5:]
            if not stream.started.done() and payload[:1] != bytes([STATUS_200]):
                stream.started.set_exception(ConnectionError("answered with a status other than 200"))
        elif kind == SETTINGS and not flags & ACK:
            self.transport.write(h2_frame(SETTINGS, ACK, 0))  # type: ignore[union-attr]
        elif kind == PING and not flags & ACK:
            self.transport.write(h2_frame(PING, ACK, 0, payload))  # type: ignore[union-attr]
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & MAX_WINDOW
            for sid in [sid for sid in self.streams if sid > last]:
                self.streams.pop(sid).ended("GOAWAY")
            self.opened = H2_STREAMS_PER_CONNECTION  # no new streams here
        if stream and (kind == RST_STREAM or (kind in (DATA, HEADERS) and flags & END_STREAM)):
            self.streams.pop(stream_id, None)
            stream.ended("reset" if kind == RST_STREAM else "ended by the server")


class H2c:
    """Streams over a few HTTP/2 connections, H2_STREAMS_PER_CONNECTION each (as h2load does in bench/h2load.py)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.connections: list[H2Connection] = []
        self.lock = asyncio.Lock()

    async def open(self, subscriber: Subscriber, resume: bool = False) -> StreamProtocol:
        async with self.lock:
            current = self.connections[-1] if self.connections else None
            if current is None or current.lost or current.opened >= H2_STREAMS_PER_CONNECTION:
                loop = asyncio.get_running_loop()
                _, current = await loop.create_connection(
                    lambda: H2Connection(self.config), self.config.host, self.config.port
                )
                self.connections.append(current)
            stream = current.start(subscriber, resume)
        try:
            await asyncio.wait_for(stream.started, self.config.connect_timeout)
        except BaseException:
            stream.close()
            raise
        return stream

    def close_all(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


TRANSPORTS = {"http1": Http1, "h2c": H2c}


async def keep_subscribed(
    opener: Http1 | H2c, subscriber: Subscriber, first: StreamProtocol, stop: asyncio.Event
) -> None:
    """Until `stop`: when the stream ends (the client fell behind, the server restarts), resume from the last id."""
    protocol = first
    try:
        while True:
            ended = asyncio.ensure_future(protocol.closed)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                return
            await asyncio.sleep(subscriber.retry_s)
            while not stop.is_set():
                try:
                    subscriber.reconnects += 1
                    protocol = await opener.open(subscriber, resume=True)
                    break
                except (OSError, asyncio.TimeoutError):
                    await asyncio.sleep(subscriber.retry_s)
            else:
                return
    finally:
        protocol.close()


# --- Books: POST /books/ on kept-open connections ----------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
            del body[-2:]
        await reader.readuntil(b"\r\n")
        return status, bytes(body)
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


class Writer:
    """Books, one a tick: the server's created_at and when the answer came, per id."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.created: dict[int, float] = {}  # book id -> created_at, seconds since the epoch
        self.round_trips: list[float] = []
        self.errors: list[str] = []
        self.skipped = 0
        self.in_flight = 0

    async def post(self, title: str) -> dict:
        config = self.config
        body = json.dumps({"title": title}).encode()
        request = (
            f"POST {BOOKS_PATH} HTTP/1.1\r\nHost: {config.host_header}:{config.port}\r\n"
            f"Authorization: Bearer {config.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        connection = self.idle.pop() if self.idle else await asyncio.open_connection(config.host, config.port)
        reader, writer = connection
        sent = time.time()
        try:
            writer.write(request)
            status, answer = await asyncio.wait_for(read_response(reader), 10)
        except BaseException:
            writer.close()
            raise
        self.idle.append(connection)
        if status != 201:
            raise FanoutError(f"POST {BOOKS_PATH} answered {status}: {answer[:200].decode(errors='replace')}")
        book = json.loads(answer)
        self.round_trips.append(time.time() - sent)
        return book

    async def post_one(self, n: int) -> None:
        self.in_flight += 1
        try:
            book = await self.post(f"fan-out {n}")
            self.created[book["id"]] = datetime.fromisoformat(book["created_at"]).timestamp()
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError, FanoutError) as error:
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1

    async def commit_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        tasks = set()
        start = loop.time()
        for n in range(round(seconds / self.config.interval)):
            await asyncio.sleep(max(0.0, start + n * self.config.interval - loop.time()))
            if self.in_flight >= POSTS_IN_FLIGHT:
                self.skipped += 1
                continue
            task = asyncio.create_task(self.post_one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


# --- Containers and Postgres, sampled while it runs ----------------------------------------------------------
class Probe:
    """The app containers' RSS and threads (bench/sample.py) and Postgres' connections, now or every few seconds."""

    def __init__(self, app_containers: list[str], db_container: str | None, nginx_container: str | None = None) -> None:
        self.apps, self.db, self.nginx = app_containers, db_container, nginx_container
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def workers(self) -> int:
        """gunicorn's workers across the app containers: the children of each master (pid 1)."""
        return sum(len(docker("exec", c, "python", "-c", WORKERS_SCRIPT).stdout.split()) for c in self.apps)

    def cpu_seconds(self, port: int) -> dict[str, float]:
        """CPU time used so far: the app containers, nginx, Postgres, and Docker's proxy for the port, if any."""

        def container(name: str) -> float:
            out = docker("exec", name, "sh", "-c", CPU_SCRIPT).stdout.split()
            return int(out[out.index("usage_usec") + 1]) / 1e6 if "usage_usec" in out else int(out[0]) / 1e9

        groups = {"app": self.apps, "nginx": [self.nginx] if self.nginx else [], "db": [self.db] if self.db else []}
        used = {name: sum(container(c) for c in ids) for name, ids in groups.items() if ids}
        used["docker-proxy"] = proxy_cpu_seconds(port)
        return used

    def connections(self) -> dict[str, int]:
        if not self.db:
            return {}
        out = docker("exec", self.db, "sh", "-c", PSQL, CONNECTIONS_SQL).stdout.strip()
        listening, active, idle, in_transaction, total = (int(n) for n in out.split(","))
        return {"listening": listening, "active": active, "idle": idle, "idle_in_transaction": in_transaction,
                "total": total}  # fmt: skip

    def sample(self) -> dict:
        apps = [usage(c) for c in self.apps]
        return {"time": time.time(), "rss_mb": sum(u.rss_mb for u in apps), "threads": sum(u.threads for u in apps),
                "per_container": [asdict(u) for u in apps], "db": self.connections()}  # fmt: skip

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except (AssertionError, subprocess.SubprocessError, OSError, ValueError) as error:  # a failed docker call
                print(f"fanout: a sample failed: {error}", file=sys.stderr)
            self._stop.wait(every)

    def start(self, every: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def stop(self) -> list[dict]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
        return self.samples

    @classmethod
    def for_project(cls, project: str) -> Probe:
        def ids(service: str) -> list[str]:
            labels = ["--filter", f"label=com.docker.compose.project={project}",
                      "--filter", f"label=com.docker.compose.service={service}"]  # fmt: skip
            return docker("ps", "-q", *labels).stdout.split()

        apps = ids("app")
        if not apps:
            raise FanoutError(f"no running app container in compose project {project!r} (--project)")
        return cls(apps, next(iter(ids("db")), None), next(iter(ids("nginx")), None))


def proxy_cpu_seconds(port: int) -> float:
    """Docker's userland proxy for a published port (when it runs) is on the path too: its CPU time, from /proc."""
    used = 0.0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if not args[0].endswith(b"docker-proxy") or str(port).encode() not in args:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


# --- The run ---------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    subscribers: int
    connected: int = 0
    connect_s: float = 0.0
    connected_at: float = 0.0  # seconds since the epoch
    books: int = 0
    skipped_ticks: int = 0
    post_errors: list[str] = field(default_factory=list)
    post_p50_ms: float = 0.0
    deliveries: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    # Per book, its first and its last subscriber, medians over the books: the
    # pipeline (commit, NOTIFY, the hub's SELECT, one write) and the fan-out on top.
    first_p50_ms: float = 0.0
    last_p50_ms: float = 0.0
    missed: int = 0
    subscribers_missing_any: int = 0
    duplicates: int = 0
    unknown_events: int = 0
    reconnects: int = 0
    client_cpu: float = 0.0  # of one core, while books were committed: near 1.0, the client itself is late
    # CPU time per delivered event while books were committed, by part: what the machine pays per event.
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    idle_rss_mb: float = 0.0
    idle_threads: int = 0
    peak_rss_mb: float = 0.0
    peak_threads: int = 0
    rss_kb_per_subscriber: float = 0.0
    threads_per_subscriber: float = 0.0
    listening_min: int = 0
    listening_max: int = 0
    db_connections_max: int = 0
    db_active_max: int = 0
    samples: list[dict] = field(default_factory=list)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise FanoutError(
            f"{needed} open files are needed and the hard limit is {hard}: raise it (ulimit -Hn, or "
            "LimitNOFILE for a service) or ask for fewer subscribers"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def connect_all(
    opener: Http1 | H2c, subscribers: list[Subscriber], opened: list[StreamProtocol]
) -> tuple[list[StreamProtocol | None], list[str]]:
    """One stream per subscriber, CONNECTING_AT_ONCE at a time; `opened` gets each as it starts."""
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    errors: list[str] = []

    async def one(subscriber: Subscriber) -> StreamProtocol | None:
        async with gate:
            try:
                protocol = await opener.open(subscriber)
            except (OSError, asyncio.TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                return None
            opened.append(protocol)
            return protocol

    return list(await asyncio.gather(*(one(s) for s in subscribers))), errors


async def fan_out(config: Config, probe: Probe | None = None) -> Outcome:
    """One run at config.subscribers; raises FanoutError when the streams cannot all be opened."""
    raise_open_files_limit(config.subscribers + POSTS_IN_FLIGHT + 256)
    outcome = Outcome(config.subscribers)
    writer = Writer(config)
    subscribers: list[Subscriber] = []
    opened: list[StreamProtocol] = []
    opener = TRANSPORTS[config.transport](config)
    stop = asyncio.Event()

    async def phases() -> None:
        try:  # the first books: the last one's id is where the streams start, and they prove the token
            for _ in range(WARM_UP_BOOKS):
                after = (await writer.post("fan-out warm-up"))["id"]
                await asyncio.sleep(config.interval)
        except (FanoutError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
            raise FanoutError(f"could not create a book: {type(error).__name__}: {error}") from None
        writer.round_trips.clear()
        # Streams opened and closed as the real ones will be: thread pools and connections they start
        # belong to the idle numbers, not to each subscriber's.
        warm = [Subscriber(after, 1) for _ in range(min(config.subscribers, 2 * CONNECTING_AT_ONCE))]
        warm_opened: list[StreamProtocol] = []
        await connect_all(opener, warm, warm_opened)
        for stream in warm_opened:
            stream.close()
        await asyncio.sleep(1.0)
        if probe:
            outcome.workers = await asyncio.to_thread(probe.workers)
            idle = await asyncio.to_thread(probe.sample)
            outcome.idle_rss_mb, outcome.idle_threads = idle["rss_mb"], idle["threads"]
        window = round(config.seconds / config.interval) + 1000
        subscribers.extend(Subscriber(after, window) for _ in range(config.subscribers))
        if probe:
            probe.start(config.sample_every)
        began = time.monotonic()
        protocols, errors = await connect_all(opener, subscribers, opened)
        outcome.connect_s = time.monotonic() - began
        outcome.connected = len(opened)
        outcome.connected_at = time.time()
        if errors:
            kinds = sorted({e.split(":", 1)[0] for e in errors})
            hint = ""
            if "ConnectionRefusedError" in kinds and config.transport == "http1":
                hint = (
                    ". Refused after thousands: Docker's userland proxy (docker-proxy) for a port published on "
                    "127.0.0.1 stops listening at its open-files limit, about 3,300 connections at 20,000 files "
                    "(docs/performance.md); --transport h2c carries the streams over a few connections"
                )
            raise FanoutError(
                f"opened {len(opened)} of {config.subscribers} streams; {len(errors)} failed "
                f"({', '.join(kinds)}), the first: {errors[0]}{hint}"
            )
        keepers = [
            asyncio.create_task(keep_subscribed(opener, s, p, stop))
            for s, p in zip(subscribers, protocols, strict=True)
            if p is not None
        ]
        await asyncio.sleep(0.5)
        servers_before = await asyncio.to_thread(probe.cpu_seconds, config.port) if probe else {}
        cpu_before, wall_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), time.monotonic()
        await writer.commit_for(config.seconds)
        last = max(writer.created, default=after)
        deadline = time.monotonic() + config.grace
        while time.monotonic() < deadline and any(s.last_id < last for s in subscribers):
            await asyncio.sleep(0.05)
        client = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu_before
        outcome.client_cpu = client / (time.monotonic() - wall_before)
        servers_after = await asyncio.to_thread(probe.cpu_seconds, config.port) if probe else {}
        outcome.cpu_seconds = {k: v - servers_before[k] for k, v in servers_after.items()} | {"client": client}
        stop.set()
        await asyncio.wait(keepers, timeout=30)

    try:
        await asyncio.wait_for(phases(), config.hard_limit())
    except asyncio.TimeoutError:
        raise FanoutError(f"the run passed its hard limit of {config.hard_limit():.0f} s") from None
    finally:
        stop.set()
        writer.close()
        opener.close_all()
        if probe:
            outcome.samples = probe.stop()
    summarise(outcome, subscribers, writer)
    return outcome


def summarise(outcome: Outcome, subscribers: list[Subscriber], writer: Writer) -> None:
    after = subscribers[0].after if subscribers else 0
    committed = sorted(writer.created.items())
    latencies = array("d")
    first = [float("inf")] * len(committed)
    last = [0.0] * len(committed)
    for s in subscribers:
        arrivals, missing = s.arrivals, 0
        for n, (book_id, created) in enumerate(committed):
            index = book_id - after - 1
            arrived = arrivals[index] if index < len(arrivals) else 0.0
            if arrived:
                latency = arrived - created
                latencies.append(latency)
                first[n], last[n] = min(first[n], latency), max(last[n], latency)
            else:
                missing += 1
        outcome.missed += missing
        outcome.subscribers_missing_any += missing > 0
        outcome.duplicates += s.duplicates
        outcome.unknown_events += s.unknown
        outcome.reconnects += s.reconnects
    ordered = sorted(latencies)
    outcome.deliveries = len(ordered)
    outcome.p50_ms = percentile(ordered, 0.50) * 1000
    outcome.p99_ms = percentile(ordered, 0.99) * 1000
    outcome.max_ms = (ordered[-1] if ordered else float("nan")) * 1000
    outcome.cpu_us_per_event = {k: v * 1e6 / max(len(ordered), 1) for k, v in outcome.cpu_seconds.items()}
    outcome.first_p50_ms = percentile(sorted(t for t in first if t != float("inf")), 0.5) * 1000
    outcome.last_p50_ms = percentile(sorted(t for t in last if t), 0.5) * 1000
    outcome.books = len(committed)
    outcome.skipped_ticks = writer.skipped
    outcome.post_errors = writer.errors[:20]
    outcome.post_p50_ms = percentile(sorted(writer.round_trips), 0.5) * 1000
    samples = outcome.samples
    if samples:
        outcome.peak_rss_mb = max(s["rss_mb"] for s in samples)
        outcome.peak_threads = max(s["threads"] for s in samples)
        n = max(outcome.subscribers, 1)
        outcome.rss_kb_per_subscriber = (outcome.peak_rss_mb - outcome.idle_rss_mb) * 1024 / n
        outcome.threads_per_subscriber = (outcome.peak_threads - outcome.idle_threads) / n
        db = [s["db"] for s in samples if s["db"]]
        # Listeners once every stream is open: a worker's hub connects at its first subscriber.
        held = [s["db"] for s in samples if s["db"] and s["time"] >= outcome.connected_at] or db
        if db:
            outcome.listening_min = min(d["listening"] for d in held)
            outcome.listening_max = max(d["listening"] for d in held)
            outcome.db_connections_max = max(d["total"] for d in db)
            outcome.db_active_max = max(d["active"] for d in db)


def verdict(outcome: Outcome) -> list[str]:
    """What falls short of the goals other than latency (which depends on the machine)."""
    problems = []
    if outcome.connected < outcome.subscribers:
        problems.append(f"{outcome.subscribers - outcome.connected} streams not opened")
    if outcome.missed:
        problems.append(f"{outcome.missed} events missed")
    if outcome.duplicates:
        problems.append(f"{outcome.duplicates} events duplicated")
    if outcome.workers and not outcome.listening_min == outcome.listening_max == outcome.workers:
        problems.append(
            f"listening connections {outcome.listening_min}-{outcome.listening_max}, workers {outcome.workers}"
        )
    if outcome.post_errors:
        problems.append(f"{len(outcome.post_errors)} POSTs failed")
    if outcome.skipped_ticks:
        problems.append(f"{outcome.skipped_ticks} books not written on time ({POSTS_IN_FLIGHT} POSTs unanswered)")
    return problems


def line(outcome: Outcome) -> str:
    return (
        f"{outcome.subscribers} subscribers, {outcome.books} books: p50 {outcome.p50_ms:.0f} ms, "
        f"p99 {outcome.p99_ms:.0f} ms, max {outcome.max_ms:.0f} ms (a book's first subscriber "
        f"{outcome.first_p50_ms:.0f} ms, its last {outcome.last_p50_ms:.0f} ms); missed {outcome.missed}, "
        f"duplicates {outcome.duplicates}, reconnects {outcome.reconnects}; listening "
        f"{outcome.listening_min}-{outcome.listening_max} for {outcome.workers} workers; "
        f"{outcome.threads_per_subscriber:.3f} threads and {outcome.rss_kb_per_subscriber:.0f} KB per subscriber; "
        f"client CPU {outcome.client_cpu:.0%}; CPU µs per event: "
        + ", ".join(f"{k} {v:.0f}" for k, v in outcome.cpu_us_per_event.items())
    )


def run(config: Config, probe: Probe | None = None) -> Outcome:
    return (uvloop.run if uvloop is not None else asyncio.run)(fan_out(config, probe))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="nginx on 127.0.0.1 (default 8000)")
    parser.add_argument("--token-file", type=Path, required=True, help="the API token (API_TOKEN_FILE)")
    parser.add_argument("--subscribers", type=int, default=1000, help="streams held open (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="of commits (default 30)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between books (default 0.1)")
    parser.add_argument("--transport", choices=sorted(TRANSPORTS), default="http1",
                        help="http1: a connection per subscriber (default); h2c: HTTP/2, 100 streams each")  # fmt: skip
    parser.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "async-django"),
                        help="compose project whose containers are sampled; '' for none")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the outcome here too")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.seconds <= 0 or args.interval <= 0:
        parser.error("--subscribers, --seconds and --interval must be positive")
    config = Config(port=args.port, token=args.token_file.read_text().strip(), subscribers=args.subscribers,
                    seconds=args.seconds, interval=args.interval, transport=args.transport)  # fmt: skip
    try:
        outcome = run(config, Probe.for_project(args.project) if args.project else None)
    except FanoutError as error:
        print(f"fanout: {error}", file=sys.stderr)
        return 1
    print(line(outcome))
    if args.json:
        args.json.write_text(json.dumps(asdict(outcome), indent=2))
    problems = verdict(outcome)
    for problem in problems:
        print(f"fanout: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
