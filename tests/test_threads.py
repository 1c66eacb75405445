"""The running stack keeps the article's promise: open streams cost no thread, and the pool never leaks."""

from __future__ import annotations

import asyncio
import re
import time

from harness.stack import Stack


def worker_threads(stack: Stack) -> dict[int, int]:
    """Threads of each gunicorn worker process in the app container (the master excluded)."""
    script = (
        "for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $d/cmdline); case \"$c\" in *gunicorn*) "
        'echo "$(basename $d) $(grep PPid $d/status | cut -f2) $(grep Threads $d/status | cut -f2)";; esac; done'
    )
    rows = [line.split() for line in stack.exec("app", "sh", "-c", script).stdout.splitlines() if line.strip()]
    pids = {int(pid) for pid, _, _ in rows}
    # Workers are the gunicorn processes whose parent is a gunicorn process.
    return {int(pid): int(threads) for pid, ppid, threads in rows if int(ppid) in pids}


async def hold_streams(port: int, count: int, events: int) -> list[bytes]:
    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /events/?count={events} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=60)


def test_worker_threads_do_not_grow_with_open_streams(stack: Stack):
    idle = worker_threads(stack)
    assert len(idle) == 1, idle

    async def measure() -> tuple[int, list[bytes]]:
        streams = asyncio.create_task(hold_streams(stack.port, 300, events=6))
        await asyncio.sleep(3)  # all 300 open, mid-stream
        during = await asyncio.to_thread(worker_threads, stack)
        return max(during.values()), await streams

    peak, bodies = asyncio.run(measure())
    assert all(b.startswith(b"HTTP/1.1 200") and b.count(b"event: tick") == 6 for b in bodies)
    growth = peak - max(idle.values())
    print(f"worker threads: {max(idle.values())} idle, {peak} with 300 streams open")
    # Stock Django holds one thread per open stream (300 here); allow a handful.
    assert growth < 15, f"{growth} more threads with 300 streams open"


async def mixed_load(port: int, total: int, concurrency: int) -> list[int]:
    paths = ["/books/", "/now/", "/sync-wrapped/", "/readyz", "/async/?seconds=0", "/healthz", "/"]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(paths[n % len(paths)])
    statuses: list[int] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                path = queue.get_nowait()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head.split()[1]))
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                else:  # chunked
                    while True:
                        size = int((await reader.readline()).strip(), 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), timeout=180)
    return statuses


def pool_gauges(stack: Stack) -> dict[str, float]:
    code = "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())\n"
    text = stack.exec("app", "python", "-c", code).stdout
    return {
        name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
        for name in ("app_db_pool_connections", "app_db_pool_idle_connections", "app_db_pool_requests_waiting")
    }


def test_thousands_of_mixed_requests_leak_no_connection(stack: Stack):
    statuses = asyncio.run(mixed_load(stack.port, total=3000, concurrency=40))
    assert len(statuses) == 3000
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # The pool gauges refresh at most once a second, on a request.
    time.sleep(1.2)
    assert stack.get("/now/").status == 200
    gauges = pool_gauges(stack)
    assert gauges["app_db_pool_requests_waiting"] == 0
    assert gauges["app_db_pool_idle_connections"] == gauges["app_db_pool_connections"], gauges
    # And from Postgres' side: nothing left in a transaction, nothing beyond the
    # pool's size, and at most the one connection that listens for live updates
    # (books/live.py), idle between notifications. The task worker's connections
    # (application_name "task-worker ...", app/worker) are not the app's.
    query = (
        "SELECT count(*) FILTER (WHERE state <> 'idle'), count(*) FILTER (WHERE application_name <> 'books.live'),"
        " count(*) FILTER (WHERE application_name = 'books.live') FROM pg_stat_activity"
        " WHERE usename = current_user AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        " AND application_name NOT LIKE 'task-worker %'"
    )
    out = stack.exec("db", "sh", "-c", f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "{query}"').stdout
    busy, pooled, listening = (int(n) for n in out.strip().split("|"))
    assert busy == 0 and pooled <= 10 and listening <= 1, out
