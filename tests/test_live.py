"""Live books through nginx and two app replicas: every subscriber gets every book once, whichever
replica it was committed on; resuming, a database restart and a replica draining lose nothing.

The stack here runs two app replicas of one worker each, so two listening
connections serve every subscriber (books/live.py, docs/live-updates.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness.stack import Stack

REPLICAS = 2
LISTENING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'books.live'"


class Subscriber:
    """One EventSource-like client of /books/stream/ over HTTP/1.0 through nginx: no chunking to undo."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.books: list[tuple[int, float]] = []  # (id, when it arrived)
        self.comments: list[str] = []
        self.open = asyncio.Event()
        self.ended = asyncio.Event()

    async def run(self, after: int | None = None, last_event_id: int | None = None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        query = f"?after={after}" if after is not None else ""
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        writer.write(f"GET /books/stream/{query} HTTP/1.0\r\nHost: localhost\r\n{resume}\r\n".encode())
        try:
            status = await reader.readline()
            assert b" 200 " in status, status
            while (await reader.readline()).strip():
                pass
            self.open.set()
            event: dict[str, str] = {}
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                if text.startswith(":"):
                    self.comments.append(text)
                elif text:
                    name, _, value = text.partition(": ")
                    event[name] = value
                elif event.get("event") == "book":
                    self.books.append((json.loads(event["data"])["id"], time.monotonic()))
                    event = {}
                else:
                    event = {}
        finally:
            self.ended.set()
            writer.close()

    def ids(self) -> list[int]:
        return [book_id for book_id, _ in self.books]


@pytest.fixture(scope="module")
def live_stack(stack: Stack) -> Iterator[Stack]:
    with stack.sibling("live", 128, {"APP_REPLICAS": str(REPLICAS), "LIVE_KEEPALIVE": "2"}).running() as sibling:
        yield sibling


def replicas(stack: Stack) -> list[str]:
    return stack.compose("ps", "--quiet", "--status", "running", "app").stdout.split()


def post_on(container: str, token: str, title: str) -> int:
    """A book committed through one replica's own port, not through nginx: the other replica never saw the request."""
    code = (
        "import json, sys, urllib.request\n"
        "body = json.dumps({'title': sys.argv[1]}).encode()\n"
        "headers = {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + sys.argv[2]}\n"
        "request = urllib.request.Request('http://127.0.0.1:8000/books/', data=body, headers=headers)\n"
        "print(json.load(urllib.request.urlopen(request, timeout=10))['id'])\n"
    )
    done = subprocess.run(["docker", "exec", container, "python", "-c", code, title, token],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def ready(container: str) -> bool:
    """Whether one replica answers /readyz with 200 on its own port (nginx may ask another)."""
    code = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"
    done = subprocess.run(["docker", "exec", container, "python", "-c", code], capture_output=True, timeout=30)
    return done.returncode == 0


def last_id(stack: Stack) -> int:
    return int(stack.psql("SELECT coalesce(max(id), 0) FROM books_book"))


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def gather_until(subscribers: list[Subscriber], expected: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(expected <= set(s.ids()) for s in subscribers):
        await asyncio.sleep(0.05)


def test_every_subscriber_gets_every_book_once_whichever_replica_commits_it(live_stack: Stack):
    containers = replicas(live_stack)
    assert len(containers) == REPLICAS

    async def scenario() -> tuple[list[Subscriber], dict[int, float]]:
        after = last_id(live_stack)
        subscribers = [Subscriber(live_stack.port) for _ in range(200)]
        tasks = [asyncio.create_task(s.run(after=after)) for s in subscribers]
        async with asyncio.timeout(60):
            await asyncio.gather(*(s.open.wait() for s in subscribers))
        await asyncio.sleep(1)  # every stream past its first lines, waiting
        committed = {}
        for n, container in enumerate(containers):
            book_id = await asyncio.to_thread(post_on, container, live_stack.api_token, f"via replica {n}")
            committed[book_id] = time.monotonic()
        await gather_until(subscribers, set(committed), timeout=10)
        await stop(tasks)
        return subscribers, committed

    subscribers, committed = asyncio.run(scenario())
    for subscriber in subscribers:
        assert subscriber.ids() == sorted(committed), subscriber.ids()  # each once, in order
        for book_id, arrived in subscriber.books:
            assert arrived - committed[book_id] < 2.0, (book_id, arrived - committed[book_id])
    # Listening connections: one per worker, whatever the number of viewers.
    assert live_stack.psql(LISTENING) == str(REPLICAS)


def test_a_subscriber_that_reconnects_gets_what_it_missed(live_stack: Stack):
    async def scenario() -> tuple[list[int], list[int]]:
        first = Subscriber(live_stack.port)
        task = asyncio.create_task(first.run(after=last_id(live_stack)))
        await first.open.wait()
        seen = await asyncio.to_thread(post_on, replicas(live_stack)[0], live_stack.api_token, "seen")
        await gather_until([first], {seen}, timeout=10)
        await stop([task])
        missed = [await asyncio.to_thread(post_on, replicas(live_stack)[n % 2], live_stack.api_token, f"missed {n}")
                  for n in range(3)]  # fmt: skip
        again = Subscriber(live_stack.port)
        task = asyncio.create_task(again.run(last_event_id=first.ids()[-1]))
        await gather_until([again], set(missed), timeout=10)
        await stop([task])
        return missed, again.ids()

    missed, replayed = asyncio.run(scenario())
    assert replayed == missed


def test_nothing_is_missed_across_a_database_restart(live_stack: Stack):
    async def scenario() -> tuple[list[int], list[Subscriber]]:
        subscribers = [Subscriber(live_stack.port) for _ in range(10)]
        after = last_id(live_stack)
        tasks = [asyncio.create_task(s.run(after=after)) for s in subscribers]
        await asyncio.gather(*(s.open.wait() for s in subscribers))
        before = await asyncio.to_thread(post_on, replicas(live_stack)[0], live_stack.api_token, "before restart")
        await asyncio.to_thread(live_stack.compose, "restart", "db")
        # Each replica ready on its own: the writes below go to each directly.
        deadline = time.monotonic() + 60
        while not all([await asyncio.to_thread(ready, c) for c in replicas(live_stack)]):
            assert time.monotonic() < deadline, "the app did not become ready after the restart"
            await asyncio.sleep(0.5)
        # Written at once, perhaps before the listeners are back: they catch up from the database.
        insert = "INSERT INTO books_book (title, created_at) VALUES ('by psql', now()) RETURNING id"
        written = [before, int((await asyncio.to_thread(live_stack.psql, insert)).splitlines()[0])]
        written.append(await asyncio.to_thread(post_on, replicas(live_stack)[1], live_stack.api_token, "after"))
        await gather_until(subscribers, set(written), timeout=20)
        await stop(tasks)
        return written, subscribers

    written, subscribers = asyncio.run(scenario())
    for subscriber in subscribers:
        assert subscriber.ids() == written
    deadline = time.monotonic() + 20
    while live_stack.psql(LISTENING) != str(REPLICAS) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_stack.psql(LISTENING) == str(REPLICAS)


def test_a_quiet_stream_gets_a_comment_through_nginx(live_stack: Stack):
    async def scenario() -> Subscriber:
        quiet = Subscriber(live_stack.port)
        task = asyncio.create_task(quiet.run(after=last_id(live_stack)))
        await asyncio.sleep(5)  # LIVE_KEEPALIVE is 2 s on this stack
        await stop([task])
        return quiet

    assert ": keepalive" in asyncio.run(scenario()).comments


def test_long_poll_through_nginx_answers_within_a_second_of_a_commit(live_stack: Stack):
    after = last_id(live_stack)

    async def scenario() -> tuple[dict, float, float]:
        answered = 0.0

        def ask() -> dict:
            nonlocal answered
            body = live_stack.get(f"/books/updates/?after={after}&wait=20").json()
            answered = time.monotonic()
            return body

        answer = asyncio.create_task(asyncio.to_thread(ask))
        await asyncio.sleep(1)
        await asyncio.to_thread(post_on, replicas(live_stack)[1], live_stack.api_token, "long-polled")
        committed = time.monotonic()  # the POST has answered: the book is committed
        return await answer, committed, answered

    body, committed, answered = asyncio.run(scenario())
    assert [b["title"] for b in body["books"]] == ["long-polled"] and body["last_id"] == body["books"][0]["id"]
    assert answered - committed < 1.0


def test_a_long_poll_that_waits_its_longest_is_answered_not_cut_by_nginx(live_stack: Stack):
    """wait=30, the most the route allows, and nothing committed: an empty answer after 30 s, not nginx's 504."""
    after = last_id(live_stack)
    started = time.monotonic()
    answer = live_stack.get(f"/books/updates/?after={after}&wait=30", timeout=60)
    assert answer.status == 200 and answer.json() == {"books": [], "last_id": after}
    assert time.monotonic() - started >= 30


def test_a_draining_replica_ends_its_streams_and_they_resume_elsewhere(live_stack: Stack):
    leaving, staying = replicas(live_stack)

    async def scenario() -> tuple[list[Subscriber], list[Subscriber], list[int]]:
        after = last_id(live_stack)
        subscribers = [Subscriber(live_stack.port) for _ in range(20)]
        tasks = [asyncio.create_task(s.run(after=after)) for s in subscribers]
        await asyncio.gather(*(s.open.wait() for s in subscribers))
        # docker stop: SIGTERM, gunicorn drains (streams end with a notice), then the container exits.
        await asyncio.to_thread(subprocess.run, ["docker", "stop", leaving], capture_output=True, timeout=60)
        await asyncio.sleep(0.5)
        ended = [s for s in subscribers if s.ended.is_set()]
        meanwhile = [await asyncio.to_thread(post_on, staying, live_stack.api_token, f"while resuming {n}")
                     for n in range(2)]  # fmt: skip
        resumed = [Subscriber(live_stack.port) for _ in ended]
        tasks += [asyncio.create_task(r.run(after=after)) for r in resumed]
        await gather_until(resumed, set(meanwhile), timeout=20)
        await stop(tasks)
        return ended, resumed, meanwhile

    try:
        ended, resumed, meanwhile = asyncio.run(scenario())
    finally:
        subprocess.run(["docker", "start", leaving], capture_output=True, timeout=60)
    assert ended, "no stream was on the replica that left"
    for subscriber in ended:  # ended properly, with the drain's notice, not cut off
        assert subscriber.comments[-1] == ": the server is restarting; reconnect with Last-Event-ID"
    for subscriber in resumed:
        assert subscriber.ids() == meanwhile
