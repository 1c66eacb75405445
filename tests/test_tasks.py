"""Background tasks through the real stack: nothing enqueued is lost, and a worker stops as it should.

A book created through nginx enqueues its summary task (books/tasks.py); the
`worker` service runs it (app/worker). Here the worker is stopped, killed with
SIGKILL, taken down with the whole stack and doubled, and every task still runs
(or is put back in the queue) by the rules of docs/tasks.md. The stack for the
scenarios that stop and reconfigure the worker is a sibling of its own; what
only watches a task run uses the session's stack.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from harness.stack import Stack

T = TypeVar("T")

TABLE = "django_tasks_database_dbtaskresult"
# The sibling's worker settings before each scenario changes some: one worker,
# short tasks, and the reaper looking every second.
BASE_ENV = {"BOOK_SUMMARY_DELAY": "1", "TASK_REAP_INTERVAL": "1", "TASK_WORKER_REPLICAS": "1"}


def forget(stack: Stack, *task_ids: str, keep: str = "") -> None:
    """Delete these tasks from the queue (or, with keep, every READY one but that): no later scenario runs them."""
    if keep:
        where = f"status = 'READY' AND id <> '{uuid.UUID(keep)}'"
    else:
        where = "id IN (" + ",".join(f"'{uuid.UUID(task_id)}'" for task_id in task_ids) + ")"
    stack.psql(f"DELETE FROM {TABLE} WHERE {where}")  # noqa: S608 (parsed UUIDs only)


def wait_for(check: Callable[[], T], timeout: float, what: str, pause: float = 0.25) -> T:
    """Poll check() until it returns something true; fail after timeout seconds, saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(pause)


def add_book(stack: Stack, title: str) -> dict:
    response = stack.post_json("/books/", {"title": title}, token=stack.api_token)
    assert response.status == 201, response.text()
    return {**response.json(), "request_id": response.headers["x-request-id"]}  # type: ignore[dict-item]


def book(stack: Stack, book_id: int) -> dict:
    response = stack.get(f"/books/{book_id}/")
    assert response.status == 200, response.text()
    return response.json()  # type: ignore[return-value]


def task_status(stack: Stack, book_id: int) -> str:
    task = book(stack, book_id)["task"]
    return task["status"] if task else ""


def wait_status(stack: Stack, book_id: int, status: str, timeout: float) -> dict:
    wait_for(lambda: task_status(stack, book_id) == status, timeout, f"book {book_id}'s task {status}")
    return book(stack, book_id)


def worker_containers(stack: Stack, *flags: str) -> list[str]:
    return stack.compose("ps", "--quiet", *flags, "worker").stdout.split()


def inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)[0]


def docker_time(text: str) -> datetime.datetime:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros dropped, Z) as Python reads it."""
    seconds, _, rest = text.rstrip("Z").partition(".")
    fraction = re.match(r"\d*", rest).group()  # type: ignore[union-attr]
    return datetime.datetime.fromisoformat(f"{seconds}.{fraction[:6].ljust(6, '0')}+00:00")


def scrape(stack: Stack, service: str) -> str:
    """The service's Prometheus page on its METRICS_PORT (9100), read from inside its container."""
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
    return stack.exec(service, "python", "-c", code).stdout


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', match.group(2) or ""))
        if labels.items() <= found.items():
            return float(match.group(3))
    return None


@pytest.fixture(scope="module")
def tasks_stack(stack: Stack) -> Iterator[Stack]:
    # Offset 16: a /24 of its own beside the others' (harness/stack.py).
    with stack.sibling("tasks", 16, BASE_ENV).running() as sibling:
        yield sibling


def reconfigure(stack: Stack, **env: str) -> None:
    """The worker (only) recreated with these settings on top of BASE_ENV, and started; the app stays as it is."""
    stack.write_env({**BASE_ENV, **env})
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "120", "--no-deps", "worker")


# --- Nothing lost ---------------------------------------------------------------------------------


def test_a_task_enqueued_while_no_worker_runs_waits_and_runs_when_one_starts(tasks_stack: Stack):
    reconfigure(tasks_stack)
    (container,) = worker_containers(tasks_stack)
    tasks_stack.compose("stop", "worker")
    assert inspect(container)["State"]["ExitCode"] == 0  # idle: it stops at once, by itself
    added = add_book(tasks_stack, "Enqueued with no worker")
    assert added["summary_status"] == "pending"
    waited_from = time.monotonic()
    while time.monotonic() - waited_from < 4:  # no worker: it waits, untouched
        answer = book(tasks_stack, added["id"])
        assert answer["task"]["status"] == "READY" and answer["task"]["attempts"] == 0, answer
        assert answer["summary_status"] == "pending", answer
        time.sleep(0.5)

    # The web's metrics see it waiting: the number to scale workers on, and how long the oldest has waited.
    metrics = scrape(tasks_stack, "app")
    assert (sample(metrics, "app_tasks", status="READY", queue="default") or 0) >= 1, metrics
    assert (sample(metrics, "app_task_oldest_ready_seconds") or 0) >= 3, metrics

    tasks_stack.compose("start", "worker")
    done = wait_status(tasks_stack, added["id"], "SUCCESSFUL", timeout=60)
    assert done["summary_status"] == "done" and "Enqueued with no worker" in done["summary"], done
    assert done["task"]["attempts"] == 1 and done["task"]["errors"] == [], done


def test_queued_tasks_survive_compose_down_and_up(tasks_stack: Stack):
    tasks_stack.compose("stop", "worker")
    added = add_book(tasks_stack, "Queued across a restart")
    assert task_status(tasks_stack, added["id"]) == "READY"
    tasks_stack.compose("down", "--timeout", "10")  # volumes kept, as an operator's restart does
    tasks_stack.up()
    done = wait_status(tasks_stack, added["id"], "SUCCESSFUL", timeout=60)
    assert done["summary_status"] == "done" and done["task"]["attempts"] == 1, done


# --- Graceful stop ----------------------------------------------------------------------------------


def test_a_stopping_worker_finishes_its_task_and_starts_no_new_one(tasks_stack: Stack):
    reconfigure(tasks_stack, BOOK_SUMMARY_DELAY="5", TASK_WORKER_GRACE="30")
    (container,) = worker_containers(tasks_stack)
    running = add_book(tasks_stack, "Finished while stopping")
    wait_status(tasks_stack, running["id"], "RUNNING", timeout=30)
    waiting = add_book(tasks_stack, "Not started while stopping")
    tasks_stack.compose("stop", "worker")  # SIGTERM; compose waits up to TASK_WORKER_GRACE
    finished = book(tasks_stack, running["id"])
    assert finished["task"]["status"] == "SUCCESSFUL" and finished["summary_status"] == "done", finished
    assert finished["task"]["attempts"] == 1, finished
    left = book(tasks_stack, waiting["id"])
    assert left["task"]["status"] == "READY" and left["task"]["attempts"] == 0, left
    state = inspect(container)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    # Recorded by the worker itself, before its container exited.
    assert datetime.datetime.fromisoformat(finished["task"]["finished_at"]) <= docker_time(state["FinishedAt"]), state


def test_a_task_that_outlasts_the_grace_period_goes_back_in_the_queue(tasks_stack: Stack):
    # A 60 s task, far longer than the 8 s grace period, alone in the queue (the task left READY above is dropped).
    tasks_stack.compose("stop", "worker")
    added = add_book(tasks_stack, "Interrupted by the stop")
    forget(tasks_stack, keep=added["summary_task_id"])
    reconfigure(tasks_stack, BOOK_SUMMARY_DELAY="60", TASK_WORKER_GRACE="8")
    (container,) = worker_containers(tasks_stack)
    wait_status(tasks_stack, added["id"], "RUNNING", timeout=30)
    started = time.monotonic()
    tasks_stack.compose("stop", "worker")
    took = time.monotonic() - started
    # Interrupted at the deadline, 5 s before the grace period ends, and recorded: not killed by Docker.
    assert 1.5 < took < 8, took
    state = inspect(container)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0 and not state["OOMKilled"], state
    back = book(tasks_stack, added["id"])
    assert back["task"]["status"] == "READY" and back["task"]["attempts"] == 1, back
    assert back["task"]["errors"] == [] and back["summary_status"] == "pending", back
    # Nobody is left to run it: the next scenarios start from an empty queue.
    forget(tasks_stack, added["summary_task_id"])


# --- kill -9 ------------------------------------------------------------------------------------------


def kill_mid_task(stack: Stack, title: str) -> tuple[dict, str]:
    """A task RUNNING, then its worker container killed with SIGKILL; the book and the killed container."""
    added = add_book(stack, title)
    wait_status(stack, added["id"], "RUNNING", timeout=30)
    (container,) = worker_containers(stack)
    subprocess.run(["docker", "kill", "--signal", "KILL", container], capture_output=True, timeout=60, check=True)
    return added, container


def test_a_task_whose_worker_is_killed_runs_again_on_a_new_worker(tasks_stack: Stack):
    """As on a platform that replaces a lost instance: the killed worker's task runs again on another container."""
    reconfigure(tasks_stack, BOOK_SUMMARY_DELAY="4")
    added, killed = kill_mid_task(tasks_stack, "Killed, then replaced")
    tasks_stack.compose("up", "--detach", "--wait", "--no-deps", "--force-recreate", "worker")
    assert worker_containers(tasks_stack) != [killed]
    done = wait_status(tasks_stack, added["id"], "SUCCESSFUL", timeout=60)
    assert done["task"]["attempts"] == 2 and done["summary_status"] == "done", done


def test_a_task_whose_worker_is_killed_runs_again_when_it_restarts(tasks_stack: Stack):
    """kill -9 and the restart policy (or a start by hand): the same container runs the task again."""
    reconfigure(tasks_stack, BOOK_SUMMARY_DELAY="4")
    added, killed = kill_mid_task(tasks_stack, "Killed, then restarted")
    # Docker's restart policy leaves a container killed with `docker kill` stopped; a start does what it would.
    tasks_stack.compose("start", "worker")
    assert worker_containers(tasks_stack, "--status", "running") == [killed]
    try:
        done = wait_status(tasks_stack, added["id"], "SUCCESSFUL", timeout=15)
        assert done["task"]["attempts"] == 2 and done["summary_status"] == "done", done
    finally:
        # Left RUNNING: not for the next scenario's workers to find.
        forget(tasks_stack, added["summary_task_id"])


# --- Two workers ------------------------------------------------------------------------------------


def test_two_workers_share_the_queue_and_never_run_the_same_task(tasks_stack: Stack):
    reconfigure(tasks_stack, BOOK_SUMMARY_DELAY="0.2", TASK_WORKER_REPLICAS="2")
    assert len(worker_containers(tasks_stack, "--status", "running")) == 2
    books = [add_book(tasks_stack, f"Shared {n}") for n in range(60)]
    ids = [added["summary_task_id"] for added in books]
    listed = ",".join(f"'{uuid.UUID(task_id)}'" for task_id in ids)
    query = f"SELECT status, worker_ids FROM {TABLE} WHERE id IN ({listed})"  # noqa: S608 (parsed UUIDs only)

    def finished() -> list[tuple[str, list[str]]] | None:
        rows = [line.split("|", 1) for line in tasks_stack.psql(query).splitlines()]
        done = [(status, json.loads(workers)) for status, workers in rows]
        return done if len(done) == len(ids) and all(s in ("SUCCESSFUL", "FAILED") for s, _ in done) else None

    rows = wait_for(finished, timeout=90, what="60 tasks finished", pause=1)
    assert all(status == "SUCCESSFUL" for status, _ in rows), rows
    # One claim each: a task claimed twice would list two worker ids.
    assert all(len(workers) == 1 for _, workers in rows), rows
    assert len({workers[0] for _, workers in rows}) == 2, "both workers ran some"
    # And run once each: two claims racing on one row could leave one id, but both workers would log the run.
    lines = [json.loads(line) for line in tasks_stack.logs("worker").splitlines() if line.startswith("{")]
    runs = Counter(line["message"] for line in lines)
    assert all(runs[f"summarising book {added['id']}"] == 1 for added in books), runs


# --- On the session's stack: observing tasks ---------------------------------------------------------------


def test_the_worker_is_hardened_like_the_app(stack: Stack):
    (container,) = worker_containers(stack)
    info = inspect(container)
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] and host["PidsLimit"] > 0
    assert stack.exec("worker", "id", "-u").stdout.strip() != "0"
    # The database's network only: nothing from the edge (nginx) reaches it, and it reaches nothing outside.
    assert set(info["NetworkSettings"]["Networks"]) == {f"{stack.project}_data"}
    assert not info["NetworkSettings"]["Ports"]


def test_a_tasks_log_lines_carry_the_enqueuing_request_id_and_it_is_counted(stack: Stack):
    added = add_book(stack, "Traced from its request")
    done = wait_status(stack, added["id"], "SUCCESSFUL", timeout=60)
    assert done["summary_status"] == "done", done

    def mine() -> list[dict]:
        lines = [json.loads(line) for line in stack.logs("worker").splitlines() if line.startswith("{")]
        return [entry for entry in lines if entry.get("request_id") == added["request_id"]]

    entries = wait_for(mine, timeout=10, what="the worker's log lines with the request's id")
    assert any(e["message"] == f"summarising book {added['id']}" for e in entries), entries

    metrics = scrape(stack, "worker")
    labels = {"task": "books.tasks.summarize_book", "status": "SUCCESSFUL"}
    assert (sample(metrics, "app_tasks_finished_total", **labels) or 0) >= 1, metrics
    assert (sample(metrics, "app_task_duration_seconds_count", **labels) or 0) >= 1, metrics
    assert (sample(metrics, "app_task_duration_seconds_sum", **labels) or 0) > 0, metrics


def test_a_task_that_fails_is_recorded_and_never_retried(stack: Stack):
    # A book with no title cannot be created through the API: inserted directly, its task enqueued by hand.
    book_id = int(stack.psql("INSERT INTO books_book (title, created_at) VALUES ('', now()) RETURNING id").split()[0])
    stack.exec(
        "app", "python", "manage.py", "shell", "-c",
        "from books.models import Book\n"
        "from books.tasks import summarize_book\n"
        f"result = summarize_book.enqueue({book_id})\n"
        f"Book.objects.filter(pk={book_id}).update(summary_task_id=result.id)\n",
    )  # fmt: skip
    failed = wait_status(stack, book_id, "FAILED", timeout=60)
    assert failed["task"]["errors"] == ["builtins.ValueError"], failed
    assert failed["summary_status"] == "failed" and "ValueError" in failed["summary_error"], failed
    time.sleep(5)
    again = book(stack, book_id)
    assert again["task"]["status"] == "FAILED" and again["task"]["attempts"] == 1, again


ROLLED_BACK = """
from django.db import transaction
from books.models import Book
from books.tasks import summarize_book

class Undone(Exception):
    pass

try:
    with transaction.atomic():
        book = Book.objects.create(title="rolled back")
        result = summarize_book.enqueue(book.id)
        print("enqueued", book.id, result.id)
        raise Undone
except Undone:
    pass
"""


def test_a_task_enqueued_in_a_transaction_that_rolls_back_never_runs(stack: Stack):
    out = stack.exec("app", "python", "manage.py", "shell", "-c", ROLLED_BACK).stdout
    book_id, task_id = re.search(r"^enqueued (\d+) (\S+)$", out, re.MULTILINE).groups()  # type: ignore[union-attr]
    enqueued = add_book(stack, "Committed after the rollback")  # a task that does run, as a yardstick
    wait_status(stack, enqueued["id"], "SUCCESSFUL", timeout=60)
    time.sleep(2)  # the worker looks every second: it had its chances
    assert stack.psql(f"SELECT count(*) FROM {TABLE} WHERE id = '{uuid.UUID(task_id)}'") == "0"  # noqa: S608
    assert stack.get(f"/books/{int(book_id)}/").status == 404
    messages = {json.loads(line)["message"] for line in stack.logs("worker").splitlines() if line.startswith("{")}
    assert f"summarising book {enqueued['id']}" in messages
    assert f"summarising book {int(book_id)}" not in messages


def test_the_live_stream_shows_a_book_pending_then_its_summary_done(stack: Stack):
    after = int(stack.psql("SELECT coalesce(max(id), 0) FROM books_book"))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:
        sock.sendall(f"GET /books/stream/?after={after} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        stream = sock.makefile("rb")
        assert b" 200 " in stream.readline()
        while stream.readline().strip():
            pass
        added = add_book(stack, "Summarised live")
        events: list[tuple[str, dict]] = []
        event: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = stream.readline().decode().rstrip("\n")
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value
            elif not line and event:
                if event.get("event") in ("book", "book-update"):
                    events.append((event["event"], json.loads(event["data"])))
                if event.get("event") == "book-update" and events[-1][1]["id"] == added["id"]:
                    break
                event = {}
    about = [(name, data["summary_status"]) for name, data in events if data["id"] == added["id"]]
    assert about == [("book", "pending"), ("book-update", "done")], events
    update = events[-1][1]
    assert update["title"] == "Summarised live" and "Summarised live" in update["summary"], update
