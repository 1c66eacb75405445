"""Background tasks (app/worker, docs/tasks.md): what enqueueing costs a view, and tasks finished per second.

Against the blueprint stack bench/__main__.py started, with the demo's own task, as workload `tasks`.
What it measures and how: docs/performance.md, "(f) tasks".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bench.fanout import percentile, read_response
from harness.stack import Stack

TABLE = "django_tasks_database_dbtaskresult"
FINISHED = ("SUCCESSFUL", "FAILED")
MARK = "BENCH-TASKS "  # the line of a script's output that carries its answer
INTERVAL_SCRIPT = f"""
import json
from django.conf import settings
print({MARK!r} + json.dumps(settings.TASK_WORKER_INTERVAL))
"""


@dataclass(frozen=True)
class Config:
    clients: int = 20  # POSTs and aenqueue callers at once
    post_seconds: float = 10.0
    aenqueue_calls: int = 500
    pickups: int = 10
    # (label, BOOK_SUMMARY_DELAY, tasks); each runs with 1 and with 2 workers.
    batches: tuple[tuple[str, float, int], ...] = (("no-op", 0.0, 500), ("100 ms", 0.1, 100))
    workers: tuple[int, ...] = (1, 2)
    repeat: int = 2  # runs of each batch, 1 and 2 workers taking turns: the machine's noise, in the table

    @classmethod
    def quick(cls) -> Config:
        return cls(clients=5, post_seconds=2.0, aenqueue_calls=50, pickups=3,
                   batches=(("no-op", 0.0, 50), ("100 ms", 0.1, 10)), repeat=1)  # fmt: skip


@dataclass
class Latency:
    """One enqueue measure: how many, and its distribution in ms."""

    what: str
    calls: int = 0
    errors: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    per_s: float = float("nan")  # calls answered per second, where that means something
    tasks: int = 0  # the tasks these calls enqueued
    finished: int = 0  # ... of which ran to an outcome
    failed: int = 0
    drain_s: float = float("nan")  # from the end of the calls to the last task's finish


@dataclass
class Batch:
    task: str
    delay_s: float
    workers: int
    tasks: int
    finished: int = 0
    failed: int = 0
    span_s: float = 0.0  # first started_at -> last finished_at
    tasks_per_s: float = 0.0
    per_worker_per_s: list[float] = field(default_factory=list)  # each over its own busy span
    in_task_p50_ms: float = 0.0  # finished_at - started_at: the task and its outcome's stamping
    first_pickup_ms: float = 0.0  # the commit of the batch -> the first started_at
    enqueue_s: float = 0.0  # the batch's INSERTs and its one commit


def summarise(what: str, seconds: list[float]) -> Latency:
    ordered = sorted(seconds)
    latency = Latency(what, calls=len(ordered))
    if ordered:
        latency.p50_ms = percentile(ordered, 0.50) * 1000
        latency.p99_ms = percentile(ordered, 0.99) * 1000
        latency.max_ms = ordered[-1] * 1000
    return latency


class Tasks:
    def __init__(self, stack: Stack, write_env: Callable[[dict[str, str]], None], config: Config) -> None:
        self.stack, self.write_env, self.config = stack, write_env, config

    # --- the stack -----------------------------------------------------------------------------------
    def workers(self, replicas: int, delay: float) -> None:
        """The worker service recreated with these settings; back once every replica is healthy."""
        self.write_env({"TASK_WORKER_REPLICAS": str(replicas), "BOOK_SUMMARY_DELAY": f"{delay:g}"})
        self.stack.compose("up", "--detach", "--wait", "--wait-timeout", "120", "--no-deps", "--force-recreate",
                           "--scale", f"worker={replicas}", "worker")  # fmt: skip
        # Past db_worker's random start-up delay (up to 1 s): every worker is polling.
        time.sleep(2)

    def script(self, code: str) -> object:
        """Python in the app container (manage.py shell): the value it printed after MARK."""
        out = self.stack.exec("app", "python", "manage.py", "shell", "-c", code).stdout
        line = next(line for line in reversed(out.splitlines()) if line.startswith(MARK))
        return json.loads(line[len(MARK) :])

    def rows(self, where: str, columns: str) -> list[list[str]]:
        out = self.stack.psql(f"SELECT {columns} FROM {TABLE} t {where}")  # noqa: S608 (this module's own SQL)
        return [line.split("|") for line in out.splitlines() if line]

    def wait_finished(self, where: str, expected: int, timeout: float) -> None:
        """Until `expected` tasks matching `where` have an outcome, or `timeout` s (the counts then tell)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (done,) = self.rows(where + f" AND t.status IN {FINISHED}", "count(*)")[0]
            if int(done) >= expected:
                break
            time.sleep(0.5)

    def outcomes(self, latency: Latency, where: str, ended: float | None) -> None:
        """How many of these tasks ran, failed, and (`ended` given) when the last one finished after it."""
        (total, done, failed, last) = self.rows(
            where,
            "count(*), count(*) FILTER (WHERE t.status IN ('SUCCESSFUL', 'FAILED')), "
            "count(*) FILTER (WHERE t.status = 'FAILED'), coalesce(extract(epoch FROM max(t.finished_at)), 0)",
        )[0]
        latency.tasks, latency.finished, latency.failed = int(total), int(done), int(failed)
        if ended is not None:
            latency.drain_s = max(float(last) - ended, 0.0)

    # --- (1) POST /books/ ------------------------------------------------------------------------------
    async def post_books(self) -> tuple[list[float], list[str], float]:
        config, stack = self.config, self.stack
        latencies: list[float] = []
        errors: list[str] = []
        body = json.dumps({"title": "A book the benchmark wrote"}).encode()
        request = (
            f"POST /books/ HTTP/1.1\r\nHost: localhost:{stack.port}\r\nAuthorization: Bearer {stack.api_token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        deadline = time.monotonic() + config.post_seconds

        async def client() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            try:
                while time.monotonic() < deadline:
                    began = time.perf_counter()
                    writer.write(request)
                    status, answer = await asyncio.wait_for(read_response(reader), 30)
                    if status != 201:
                        errors.append(f"{status}: {answer[:200]!r}")
                        continue
                    latencies.append(time.perf_counter() - began)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                errors.append(f"{type(error).__name__}: {error}")
            finally:
                writer.close()

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(config.clients)))
        return latencies, errors, time.monotonic() - began

    def post(self, after: int) -> Latency:
        latencies, errors, seconds = asyncio.run(self.post_books())
        ended = time.time()
        latency = summarise(f"POST /books/ through nginx, {self.config.clients} clients", latencies)
        latency.errors, latency.per_s = errors[:20], len(latencies) / seconds
        where = f"JOIN books_book b ON t.id::text = b.summary_task_id WHERE b.id > {after}"
        expected = int(self.rows(where, "count(*)")[0][0])
        self.wait_finished(where, expected, 60 + expected * 0.1)
        self.outcomes(latency, where, ended)
        return latency

    # --- (2) aenqueue alone ----------------------------------------------------------------------------
    def aenqueue(self) -> Latency:
        config, tag = self.config, "bench-aenqueue"
        code = f"""
import asyncio, json, time
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connection
from books.models import Book
from books.tasks import summarize_book

ids = list(Book.objects.order_by('id').values_list('id', flat=True)[:20])
connection.close()  # back to the pool

def release():
    connection.close()  # this thread's connection, back to the pool

async def main(calls, callers):
    # At most as many callers as the pool has connections: what one app worker serves at once.
    pool = connection.settings_dict['OPTIONS'].get('pool')
    callers = min(callers, pool.get('max_size', callers)) if isinstance(pool, dict) else callers
    times, left = [], iter(range(calls))
    async def caller(warm):
        # Each call as a request makes it: a thread of its own for sync work (the ASGI handler's
        # context), its connection back to the pool at the end (request_finished).
        async with ThreadSensitiveContext():
            await summarize_book.aenqueue(ids[warm % len(ids)], request_id={tag!r})  # the pool's connections, opened
            await sync_to_async(release)()
            for n in left:
                began = time.perf_counter()
                await summarize_book.aenqueue(ids[n % len(ids)], request_id={tag!r})
                times.append(time.perf_counter() - began)
                await sync_to_async(release)()
    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    print({MARK!r} + json.dumps({{"times": times, "seconds": time.perf_counter() - began, "callers": callers}}))

asyncio.run(main({config.aenqueue_calls}, {config.clients}))
"""
        answer = self.script(code)
        ended = time.time()
        callers = answer["callers"]
        latency = summarise(f"aenqueue() alone, in the app container, {callers} callers", answer["times"])
        latency.per_s = len(answer["times"]) / answer["seconds"]
        where = f"WHERE t.args_kwargs->'kwargs'->>'request_id' = '{tag}'"
        self.wait_finished(where, config.aenqueue_calls + callers, 60 + config.aenqueue_calls * 0.1)
        self.outcomes(latency, where, ended)
        return latency

    # --- (3) pickup by an idle worker ------------------------------------------------------------------
    def pickup(self) -> Latency:
        config, tag = self.config, "bench-pickup"
        # One task at a time, at a random moment of the worker's polling cycle, the next once it has finished.
        code = f"""
import json, random, time
from books.models import Book
from books.tasks import summarize_book

book = Book.objects.order_by('id').first()
for _ in range({config.pickups}):
    time.sleep(random.random())
    result = summarize_book.enqueue(book.id, request_id={tag!r})
    deadline = time.monotonic() + 30
    while result.status.value not in {FINISHED!r} and time.monotonic() < deadline:
        time.sleep(0.05)
        result.refresh()
print({MARK!r} + json.dumps(None))
"""
        self.script(code)
        where = f"WHERE t.args_kwargs->'kwargs'->>'request_id' = '{tag}'"
        waits = self.rows(where + " AND t.started_at IS NOT NULL", "extract(epoch FROM t.started_at - t.enqueued_at)")
        latency = summarise("pickup by an idle worker: started_at - enqueued_at", [float(w) for (w,) in waits])
        self.outcomes(latency, where, None)  # one at a time: nothing to drain
        return latency

    # --- (4) throughput --------------------------------------------------------------------------------------
    def batch(self, label: str, delay: float, count: int, replicas: int) -> Batch:
        self.workers(replicas, delay)
        tag = f"bench-batch-{label}-{replicas}-{time.time_ns()}"
        # Books of their own (no two tasks update one row), then every task in one transaction: the workers
        # see the whole batch at once, at its commit.
        code = f"""
import json, time
from django.db import transaction
from books.models import Book
from books.tasks import summarize_book

books = Book.objects.bulk_create([Book(title=f'Batch book {{n}}') for n in range({count})])
began = time.time()
with transaction.atomic():
    for book in books:
        summarize_book.enqueue(book.id, request_id={tag!r})
print({MARK!r} + json.dumps({{"began": began, "committed": time.time()}}))
"""
        answer = self.script(code)
        where = f"WHERE t.args_kwargs->'kwargs'->>'request_id' = '{tag}'"
        self.wait_finished(where, count, 60 + count * (delay + 0.05) * 2)
        rows = self.rows(
            where + " AND t.finished_at IS NOT NULL",
            "extract(epoch FROM t.started_at), extract(epoch FROM t.finished_at), t.status, t.worker_ids->>-1",
        )
        batch = Batch(label, delay, replicas, count, enqueue_s=answer["committed"] - answer["began"])
        if not rows:
            return batch
        starts, ends = [float(r[0]) for r in rows], [float(r[1]) for r in rows]
        batch.finished, batch.failed = len(rows), sum(r[2] == "FAILED" for r in rows)
        batch.span_s = max(ends) - min(starts)
        batch.tasks_per_s = len(rows) / batch.span_s if batch.span_s > 0 else float("nan")
        batch.in_task_p50_ms = percentile(sorted(e - s for s, e in zip(starts, ends, strict=True)), 0.5) * 1000
        batch.first_pickup_ms = (min(starts) - answer["committed"]) * 1000
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for start, end, _, worker in rows:
            by_worker.setdefault(worker, []).append((float(start), float(end)))
        for spans in by_worker.values():
            busy = max(e for _, e in spans) - min(s for s, _ in spans)
            batch.per_worker_per_s.append(len(spans) / busy if busy > 0 else float("nan"))
        batch.per_worker_per_s.sort(reverse=True)
        return batch

    def run(self) -> dict:
        config = self.config
        outcome: dict = {"clients": config.clients, "post_seconds": config.post_seconds, "enqueue": [],
                         "batches": []}  # fmt: skip
        self.workers(1, 0.0)
        outcome["interval_s"] = float(self.script(INTERVAL_SCRIPT))  # type: ignore[arg-type]
        after = int(self.stack.psql("SELECT coalesce(max(id), 0) FROM books_book"))
        for step in (lambda: self.post(after), self.aenqueue, self.pickup):
            latency = step()
            outcome["enqueue"].append(asdict(latency))
            print(f"  tasks: {line(latency)}", flush=True)
        for label, delay, count in config.batches:
            for replicas in [n for _ in range(config.repeat) for n in config.workers]:
                batch = self.batch(label, delay, count, replicas)
                outcome["batches"].append(asdict(batch))
                print(f"  tasks: {batch_line(batch)}", flush=True)
        outcome["problems"] = problems(outcome)
        for problem in outcome["problems"]:
            print(f"  tasks: {problem}", flush=True)
        return outcome


def line(latency: Latency) -> str:
    return (
        f"{latency.what}: {latency.calls} calls, p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms; "
        f"{latency.finished} of {latency.tasks} tasks finished ({latency.failed} failed)"
    )


def batch_line(batch: Batch) -> str:
    each = ", ".join(f"{rate:.0f}" for rate in batch.per_worker_per_s)
    return (
        f"{batch.tasks} {batch.task} tasks, {batch.workers} worker(s): {batch.finished} finished "
        f"({batch.failed} failed) in {batch.span_s:.2f} s, {batch.tasks_per_s:.1f} tasks/s (each worker: {each}); "
        f"first pickup {batch.first_pickup_ms:.0f} ms after the commit"
    )


def problems(outcome: dict) -> list[str]:
    """Tasks that did not run, calls that failed: what falls short other than speed."""
    found = []
    for latency in outcome["enqueue"]:
        if latency["errors"]:
            found.append(f"{latency['what']}: {len(latency['errors'])} errors, the first: {latency['errors'][0]}")
        if latency["finished"] < latency["tasks"] or latency["failed"]:
            found.append(f"{latency['what']}: {latency['finished']} of {latency['tasks']} tasks finished, "
                         f"{latency['failed']} failed")  # fmt: skip
    for batch in outcome["batches"]:
        if batch["finished"] < batch["tasks"] or batch["failed"]:
            found.append(f"{batch['task']} with {batch['workers']} worker(s): {batch['finished']} of "
                         f"{batch['tasks']} tasks finished, {batch['failed']} failed")  # fmt: skip
    return found
