"""What async buys: streams that arrive as they are produced, and many slow requests on one worker."""

from __future__ import annotations

import asyncio
import http.client
import time

from harness.stack import Stack


def open_stream(stack: Stack, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    conn.request("GET", path, headers={"Host": f"localhost:{stack.port}", "Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    return conn, response


def read_events(response: http.client.HTTPResponse, count: int) -> list[tuple[float, str]]:
    """Read until `count` SSE events have arrived, noting when each one did."""
    events, lines = [], []
    while len(events) < count:
        line = response.readline().decode()
        if not line:
            break
        if line == "\n":
            events.append((time.monotonic(), "".join(lines)))
            lines = []
        else:
            lines.append(line)
    return events


def test_sse_events_arrive_one_by_one_through_nginx(stack: Stack):
    started = time.monotonic()
    conn, response = open_stream(stack, "/events/?count=3")
    try:
        events = read_events(response, 3)
    finally:
        conn.close()
    assert len(events) == 3, events
    arrivals = [at - started for at, _ in events]
    # Buffered, all three would arrive together after two seconds. Unbuffered,
    # the first comes at once and the others about a second apart.
    assert arrivals[0] < 0.9, arrivals
    assert arrivals[1] - arrivals[0] > 0.5 and arrivals[2] - arrivals[1] > 0.5, arrivals
    assert [event.splitlines()[0] for _, event in events] == ["id: 1", "id: 2", "id: 3"]


def test_sse_client_disconnect_ends_the_generator(stack: Stack):
    seen = len(stack.logs("app"))
    conn, response = open_stream(stack, "/events/?count=30")
    try:
        assert len(read_events(response, 2)) == 2
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "events: client disconnected after" in stack.logs("app")[seen:]:
            break
        time.sleep(0.5)
    logs = stack.logs("app")[seen:]
    assert "events: client disconnected after 2 of 30 events" in logs
    assert "Traceback" not in logs and "ERROR" not in logs


async def one_slow_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /async/?seconds=1 HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def many_slow_requests(port: int, count: int) -> tuple[float, list[bytes | BaseException]]:
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(one_slow_request(port) for _ in range(count)), return_exceptions=True), timeout=30
    )
    return time.monotonic() - started, results


def test_500_concurrent_one_second_requests_on_one_worker(stack: Stack):
    listing = stack.exec("app", "sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done").stdout
    gunicorns = [line for line in listing.splitlines() if "/opt/venv/bin/gunicorn -c" in line]
    assert len(gunicorns) == 2, f"one gunicorn master and one worker: {listing}"
    elapsed, results = asyncio.run(many_slow_requests(stack.port, 500))
    failures = [r for r in results if isinstance(r, BaseException) or not r.startswith(b"HTTP/1.1 200")]
    assert not failures, failures[:3]
    assert all("非同期ビューのレスポンス".encode() in r for r in results)
    print(f"500 concurrent /async/?seconds=1 on one worker: {elapsed:.2f} s")
    # One after another, 500 one-second sleeps take 500 s; awaited together, about
    # one. A ratio, not a time: on average at least 50 at once (a server with a
    # pool of 32 threads manages 32), whatever a loaded machine adds.
    one_after_another = 500 * 1.0
    assert elapsed < one_after_another / 50, f"500 concurrent one-second requests took {elapsed:.2f} s"
