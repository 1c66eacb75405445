"""Background tasks (app/worker, books/tasks.py) against Postgres: enqueued by the views, run by the worker.

The worker runs here in this process (batch mode: until the queue is empty)
or as `manage.py run_worker` processes on the test database, as in production.
The compose-level behaviour (kill -9 of a container, down/up, the live page)
is in tests/test_tasks.py.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.tasks import TaskResultStatus
from django.test import override_settings
from django_tasks_db.models import DBTaskResult
from prometheus_client import REGISTRY, generate_latest
from test_live import CSRF, session_of

from books.models import Book
from books.tasks import summarize_book
from core.sizing import TASK_WORKER_POOL_SIZE, ConnectionBudget
from worker import identity
from worker.metrics import QueueCollector
from worker.reaper import Reaper
from worker.run import Worker

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "t0ken-for-task-tests"
APP = Path("/srv/app")


def run_worker_here(worker_id: str = "test-worker") -> None:
    """The production Worker in this process, until the queue is empty."""
    Worker(
        queue_names=["*"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=worker_id,
        excluded_queue_names=[],
    ).run()


def worker_process(**env: str) -> subprocess.Popen:
    """`manage.py run_worker` on the test database, as the compose service runs it."""
    settings = connection.settings_dict
    environ = {**os.environ, "POSTGRES_DB": settings["NAME"], "METRICS_PORT": "", **env}
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--no-startup-delay"],
        cwd=APP,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("not within the time allowed")


def row(task_id: str) -> DBTaskResult:
    return DBTaskResult.objects.get(id=task_id)


# --- Enqueued by the views, written by the worker -------------------------------------------------
@override_settings(API_TOKEN=TOKEN, BOOK_SUMMARY_DELAY=0)
def test_a_new_book_enqueues_its_summary_and_the_worker_writes_it(asgi):
    created = asgi.post("/books/", {"title": "Two cities"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert created.status_code == 201
    book = created.json()
    assert book["summary_status"] == "pending" and book["summary_task_id"]
    pending = asgi.get(f"/books/{book['id']}/").json()
    assert pending["task"]["status"] == "READY" and pending["summary_status"] == "pending"

    run_worker_here()

    done = asgi.get(f"/books/{book['id']}/").json()
    assert done["summary_status"] == "done" and done["summary"].startswith("“Two cities”: 2 words")
    assert done["task"]["status"] == "SUCCESSFUL" and done["task"]["attempts"] == 1 and done["task"]["errors"] == []


def test_an_unknown_book_is_a_404(asgi):
    response = asgi.get("/books/999999/")
    assert response.status_code == 404 and "999999" in response.json()["error"]


@override_settings(BOOK_SUMMARY_DELAY=0)
def test_a_failing_task_is_recorded_shown_and_not_retried(asgi):
    book = Book.objects.create(title="   ")  # no title to summarise: the task raises
    result = summarize_book.enqueue(book.id)
    Book.objects.filter(pk=book.pk).update(summary_task_id=result.id)
    run_worker_here()
    run_worker_here()  # a second pass finds nothing to run: a failure is final

    shown = asgi.get(f"/books/{book.id}/").json()
    assert shown["summary_status"] == "failed" and "ValueError" in shown["summary_error"]
    assert shown["task"]["status"] == "FAILED" and shown["task"]["attempts"] == 1
    assert shown["task"]["errors"] == ["builtins.ValueError"]
    assert "has no title" in row(result.id).traceback


def test_a_task_for_a_missing_book_fails_with_its_error():
    result = summarize_book.enqueue(987654)
    run_worker_here()
    assert row(result.id).status == TaskResultStatus.FAILED
    assert row(result.id).exception_class_path == "books.models.Book.DoesNotExist"


def test_a_task_enqueued_in_a_transaction_that_rolls_back_never_exists():
    with pytest.raises(RuntimeError), transaction.atomic():
        book = Book.objects.create(title="rolled back")
        summarize_book.enqueue(book.id)
        raise RuntimeError
    assert not DBTaskResult.objects.exists()


# --- Workers that die: the reaper ----------------------------------------------------------------------
def claimed_by(worker_id: str) -> DBTaskResult:
    book = Book.objects.create(title="claimed")
    task = row(summarize_book.enqueue(book.id).id)
    task.claim(worker_id)
    return task


def test_a_task_whose_worker_died_goes_back_in_the_queue_after_two_looks():
    task = claimed_by("gone-1")
    reaper = Reaper("default")
    assert reaper.reap() == 0 and row(task.id).status == TaskResultStatus.RUNNING  # once: maybe a reconnect
    assert reaper.reap() == 1
    again = row(task.id)
    assert again.status == TaskResultStatus.READY and again.worker_ids == ["gone-1"] and again.started_at is None


def test_a_task_whose_worker_is_alive_is_left_alone():
    with connection.cursor() as cursor:  # this test's connection stands for the worker's
        cursor.execute("SELECT set_config('application_name', %s, false)", [identity.application_name("alive-1")])
    task = claimed_by("alive-1")
    reaper = Reaper("default")
    assert reaper.reap() == 0 and reaper.reap() == 0
    assert row(task.id).status == TaskResultStatus.RUNNING


@override_settings(TASK_MAX_ATTEMPTS=2)
def test_a_task_that_lost_its_worker_too_often_fails_with_worker_lost():
    task = claimed_by("gone-1")
    task.status = TaskResultStatus.READY
    task.save(update_fields=["status"])
    task.claim("gone-2")  # a second worker died on it too
    reaper = Reaper("default")
    reaper.reap()
    assert reaper.reap() == 1
    failed = row(task.id)
    assert failed.status == TaskResultStatus.FAILED and failed.exception_class_path == "worker.reaper.WorkerLost"
    book = Book.objects.get(pk=failed.args_kwargs["args"][0])
    assert book.summary_status == "failed" and "WorkerLost" in book.summary_error  # shown, not waiting forever


# --- Real worker processes --------------------------------------------------------------------------------
def test_two_workers_never_run_the_same_task():
    books = [Book.objects.create(title=f"book {n}") for n in range(40)]
    ids = [summarize_book.enqueue(book.id).id for book in books]
    workers = [worker_process(BOOK_SUMMARY_DELAY="0.05") for _ in range(2)]
    try:
        wait_for(lambda: DBTaskResult.objects.filter(status=TaskResultStatus.SUCCESSFUL).count() == len(ids), 60)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=20)[0] for process in workers]
    claims = [row(task_id).worker_ids for task_id in ids]
    assert all(len(ids_) == 1 for ids_ in claims), outputs  # claimed once each
    assert len({ids_[0] for ids_ in claims}) == 2  # and both workers took some
    assert [process.returncode for process in workers] == [0, 0], outputs


def test_sigterm_lets_the_running_task_finish_and_starts_no_other():
    first, second = (Book.objects.create(title=f"book {n}") for n in range(2))
    running = summarize_book.enqueue(first.id).id
    process = worker_process(BOOK_SUMMARY_DELAY="3")
    try:
        wait_for(lambda: row(running).status == TaskResultStatus.RUNNING)
        waiting = summarize_book.enqueue(second.id).id
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert row(running).status == TaskResultStatus.SUCCESSFUL
    assert row(waiting).status == TaskResultStatus.READY  # left for the next worker


def worker_connections(select: str = "count(*)", waiting_for_a_lock: bool = False) -> list:
    """`select`, "count(*)" or "pg_terminate_backend(pid)", over the task workers' connections in pg_stat_activity."""
    assert select in ("count(*)", "pg_terminate_backend(pid)")
    lock = " AND wait_event_type = 'Lock'" if waiting_for_a_lock else ""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else one snapshot per transaction
        cursor.execute(
            # Not this test's own: a Worker run in this process names its connection as workers do.
            f"SELECT {select} FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s "  # noqa: S608
            f"AND pid <> pg_backend_pid(){lock}",
            [identity.PREFIX + "%"],
        )
        return [value for (value,) in cursor.fetchall()]


def test_sigterm_while_the_worker_polls_stops_it_cleanly_and_what_it_claimed_still_runs():
    """A stop that lands inside the query claiming the next task: exit status 0, and the task it claims runs."""
    # A statement timeout longer than the test holds its lock: the claim must still be waiting at the stop.
    process = worker_process(BOOK_SUMMARY_DELAY="0", DB_STATEMENT_TIMEOUT="60")
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {DBTaskResult._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            book = Book.objects.create(title="claimed while stopping")
            task_id = summarize_book.enqueue(book.id).id

            # The worker's two connections waiting for the lock: its keeper's reaper, which looks at start, and
            # the claim of its first poll (pg_stat_activity's query text is cut short: too long to tell).
            # So the worker has started, and its first poll waits for this transaction.
            wait_for(lambda: worker_connections(waiting_for_a_lock=True) == [2], 60)
            process.send_signal(signal.SIGTERM)
            time.sleep(1)  # the worker handles the signal while its query still waits
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "stopping: no task running" in output, output
    assert row(task_id).status == TaskResultStatus.SUCCESSFUL, output


@pytest.mark.parametrize("failure", ["statement timeout", "database unreachable"])
def test_a_look_for_a_task_the_database_fails_is_tried_again_and_the_worker_lives_on(failure):
    """The claim cancelled by DB_STATEMENT_TIMEOUT (a lock held too long), or no database for a while: no exit."""
    process = worker_process(BOOK_SUMMARY_DELAY="0", DB_STATEMENT_TIMEOUT="1")
    table, database = DBTaskResult._meta.db_table, connection.settings_dict["NAME"]
    try:
        wait_for(lambda: worker_connections() != [0], 30)
        time.sleep(1.5)  # the worker is in its loop: at least one look for a task, TASK_WORKER_INTERVAL apart
        with connection.cursor() as cursor:
            if failure == "statement timeout":
                with transaction.atomic():
                    cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                    time.sleep(3)  # past the worker's 1 s statement timeout, at least once
            else:  # the worker's connections gone and no new one let in, as in a restart; this one stays
                with other_database() as admin:
                    admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
                    try:
                        assert worker_connections("pg_terminate_backend(pid)"), "the worker had no connection"
                        time.sleep(5)  # looks fail on the dead connections, then on the pool's 3 s timeout
                    finally:
                        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        book = Book.objects.create(title=f"after the {failure}")
        task_id = summarize_book.enqueue(book.id).id
        wait_for(lambda: row(task_id).status == TaskResultStatus.SUCCESSFUL, 30)
        assert process.poll() is None, "the worker exited"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "could not look for a task" in output, output


def other_database() -> psycopg.Connection:
    """A connection to the server's `postgres` database: Postgres alters a database's settings only from another."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    return psycopg.connect(**{**params, "dbname": "postgres"}, autocommit=True)


def test_a_task_that_outlasts_the_grace_period_is_interrupted_and_requeued():
    book = Book.objects.create(title="long")
    task_id = summarize_book.enqueue(book.id).id
    process = worker_process(BOOK_SUMMARY_DELAY="60", TASK_WORKER_GRACE="6")  # interrupted 1 s after SIGTERM
    try:
        wait_for(lambda: row(task_id).status == TaskResultStatus.RUNNING)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        took = time.monotonic() - stopping
    finally:
        process.kill()
    assert took < 6, output  # within the grace period, well before a platform's kill
    requeued = row(task_id)
    assert requeued.status == TaskResultStatus.READY and requeued.worker_ids, output
    assert Book.objects.get(pk=book.pk).summary_error == ""  # not shown as failed: it will run again
    assert "back in the queue" in output


def test_a_worker_killed_mid_task_leaves_it_to_run_again():
    book = Book.objects.create(title="survivor")
    task_id = summarize_book.enqueue(book.id).id
    first = worker_process(BOOK_SUMMARY_DELAY="30")
    wait_for(lambda: row(task_id).status == TaskResultStatus.RUNNING)
    first.kill()  # SIGKILL: no chance to record anything
    first.wait(10)
    second = worker_process(BOOK_SUMMARY_DELAY="0", TASK_REAP_INTERVAL="0.5")
    try:
        wait_for(lambda: row(task_id).status == TaskResultStatus.SUCCESSFUL, 30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    assert len(row(task_id).worker_ids) == 2  # claimed by the dead worker, then by the second
    assert Book.objects.get(pk=book.pk).summary_status == "done"


# --- Health, metrics, sizing ---------------------------------------------------------------------------
def healthcheck_module():
    spec = importlib.util.spec_from_file_location("worker_healthcheck", "/srv/deploy/worker/healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_healthcheck_fails_a_hung_worker_or_an_overlong_task():
    verdict = healthcheck_module().verdict
    now = 1_000_000.0
    idle = {"beat": now - 2, "task": "", "task_since": None, "time_limit": 300}
    assert verdict(idle, now) is None
    assert "no heartbeat" in verdict({**idle, "beat": now - 60}, now)
    busy = {**idle, "task": "abc", "task_since": now - 100}
    assert verdict(busy, now) is None
    assert "TASK_TIME_LIMIT" in verdict({**busy, "task_since": now - 400}, now)


def test_the_worker_writes_the_heartbeat_the_healthcheck_reads():
    heartbeat = Path("/tmp/task-worker.json")
    heartbeat.unlink(missing_ok=True)
    run_worker_here("beating")
    state = json.loads(heartbeat.read_text())
    assert state["worker_id"] == "beating" and state["task"] == "" and abs(state["beat"] - time.time()) < 30
    assert healthcheck_module().verdict(state, time.time()) is None


@override_settings(BOOK_SUMMARY_DELAY=0)
def test_queue_metrics_count_what_waits_and_the_worker_counts_what_finished():
    books = [Book.objects.create(title=f"book {n}") for n in range(3)]
    for book in books:
        summarize_book.enqueue(book.id)
    families = {family.name: family for family in QueueCollector().collect()}
    ready = [s.value for s in families["app_tasks"].samples if s.labels["status"] == "READY"]
    assert ready == [3] and families["app_task_oldest_ready_seconds"].samples[0].value >= 0
    run_worker_here()
    text = generate_latest(REGISTRY).decode()
    assert 'app_tasks_finished_total{status="SUCCESSFUL",task="books.tasks.summarize_book"}' in text
    assert "app_task_duration_seconds_bucket" in text


def test_the_connection_budget_counts_task_workers():
    base = ConnectionBudget(replicas=2, workers=2, pool_max=5, spare=5)
    with_workers = ConnectionBudget(replicas=2, workers=2, pool_max=5, spare=5, worker_replicas=3)
    assert with_workers.total - base.total == (3 + 1) * TASK_WORKER_POOL_SIZE
    assert "TASK_WORKER_REPLICAS 3" in with_workers.explain()


def test_a_worker_id_is_new_at_each_start_and_fits_postgres_application_name(monkeypatch):
    monkeypatch.setattr(identity.socket, "gethostname", lambda: "h" * 64)  # a Kubernetes pod name can be that long
    first, second = identity.worker_id(), identity.worker_id()
    assert first != second  # a container restarted in place (same host name, pid 1) is a new worker
    name = identity.application_name(first)
    assert len(name.encode()) <= 63  # NAMEDATALEN - 1: longer names are cut, and the reaper would miss them
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [name])
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == name


def test_a_book_added_in_the_admin_enqueues_its_summary_in_the_admins_transaction(asgi):
    admin = User.objects.create_superuser("admin", password="unused-here")
    form = f"title=From+the+admin&csrfmiddlewaretoken={CSRF}&_save=Save".encode()
    answer = asgi.post("/admin/books/book/add/", form, content_type="application/x-www-form-urlencoded",
                       headers={"Cookie": f"sessionid={session_of(admin)}; csrftoken={CSRF}"})  # fmt: skip
    assert answer.status_code == 302, answer.content[:500]
    book = Book.objects.get(title="From the admin")
    task = row(book.summary_task_id)
    assert task.status == TaskResultStatus.READY and task.args_kwargs["args"] == [book.id]
