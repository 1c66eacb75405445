"""One worker overloaded with database requests: it turns the excess away at once and keeps answering.

On the session's stack, through nginx; docs/operations.md, "Database timeouts and load shedding".
The per-worker bound on requests in flight is tested in the image, tests/app/test_load_shedding.py.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass

from harness.stack import Stack
from tests.test_faults import assert_pool_not_leaked, wait_for

POOL_TIMEOUT = 3.0  # DB_POOL_TIMEOUT's default
LOCK_SECONDS = 3  # how long the books table stays locked
BURST = 120  # requests at once: well past the pool (10) and its queue (40)
SLACK = 2.0  # what a loaded 2-core machine may add
QUICK = 1.5  # a request turned away is answered within this


@dataclass(frozen=True)
class Answer:
    path: str
    started: float
    elapsed: float
    status: int | None
    retry_after: str | None = None
    body: bytes = b""
    error: str = ""

    def describe(self) -> str:
        return f"GET {self.path} -> {self.status or self.error} in {self.elapsed:.2f} s"


def get(port: int, path: str, timeout: float = 15) -> Answer:
    """One GET on a new connection to nginx on 127.0.0.1:port, with the Retry-After header kept."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": f"localhost:{port}"})
        response = conn.getresponse()
        body = response.read()
        elapsed = time.monotonic() - started
        return Answer(path, started, elapsed, response.status, response.getheader("Retry-After"), body)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(path, started, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def books_locked(stack: Stack) -> bool:
    return (
        stack.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'books_book' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        )
        == "1"
    )


def test_overloaded_worker_sheds_load(stack: Stack):
    """One gunicorn worker, a pool of 10 connections, 40 waiters at most (DB_POOL_MAX_SIZE, DB_POOL_MAX_WAITING).
    While a transaction locks the books table, every /books/ request keeps its connection; a burst of far more
    than the pool and its queue hold then arrives. The requests past the bound get a 503 with Retry-After at
    once, none waits past the pool timeout, /healthz answers throughout, and afterwards every request succeeds."""
    assert len(stack.gunicorn_workers()) == 1
    assert get(stack.port, "/books/").status == 200

    # A migration-like transaction holding the table: /books/ requests keep their connections while they wait.
    locker = threading.Thread(
        target=stack.psql,
        args=(f"BEGIN; LOCK TABLE books_book IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({LOCK_SECONDS}); COMMIT;",),
        daemon=True,
    )
    locker.start()
    wait_for("the books table is locked", lambda: books_locked(stack), timeout=10, interval=0.05)

    burst: list[Answer] = []
    probes: list[Answer] = []
    done = threading.Event()

    def one() -> None:
        answer = get(stack.port, "/books/")
        burst.append(answer)  # list.append is atomic

    def probe() -> None:
        while not done.is_set():
            probes.append(get(stack.port, "/healthz", timeout=5))
            time.sleep(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    senders = [threading.Thread(target=one, daemon=True) for _ in range(BURST)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    done.set()
    prober.join(10)
    locker.join(30)

    statuses = sorted(a.status or 0 for a in burst)
    print(f"{BURST} requests at once: {statuses.count(200)} x 200, {statuses.count(503)} x 503")
    assert len(burst) == BURST
    assert set(statuses) <= {200, 503}, [a.describe() for a in burst if a.status not in (200, 503)]
    turned_away = [a for a in burst if a.status == 503]
    # Past the bound, a quick answer that says when to come back.
    assert all(a.retry_after == "1" and b"try again" in a.body for a in turned_away)
    quick = [a for a in turned_away if a.elapsed < QUICK and b"server busy" in a.body]
    assert len(quick) >= 20, [a.describe() for a in turned_away]
    # None waited past the pool timeout (the lock is shorter than it).
    slow = [a.describe() for a in burst if a.elapsed > POOL_TIMEOUT + SLACK]
    assert not slow, slow
    # The worker kept answering its liveness probe.
    assert len(probes) >= 5
    assert all(p.status == 200 and p.elapsed < QUICK for p in probes), [p.describe() for p in probes]

    # And afterwards, everything is served again.
    after = [get(stack.port, path) for path in ("/books/", "/sync-wrapped/", "/readyz") * 5]
    assert all(a.status == 200 for a in after), [a.describe() for a in after]
    assert_pool_not_leaked(stack)
