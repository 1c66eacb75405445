"""Faults, each while a bounded load runs through nginx on 127.0.0.1.

On the session's stack, each leaving it serving again: the database stopped or silent, a worker killed,
`docker compose stop app` mid-request, the memory limit. On a stack of its own with two replicas, through
the documented commands: a redeploy, the data across `down`/`up` and `kill -9`, a backup and restore.
What each must show: docs/operations.md, "When things fail".
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from harness.stack import Stack, docker
from tests import load
from tests.test_upstream import proxied

VERSION_LABEL = "org.opencontainers.image.version"

DB_BACKED = ("/books/", "/sync-wrapped/")
OUTAGE_SECONDS = 30
# The bounds: readiness turns within its cache period plus its timeout (2 s,
# app/core/health.py) and a second a loaded machine may add; no request hangs
# past 5 s; the app is back within 5 s of the database.
READYZ_TURNS_WITHIN = 3.0
NO_REQUEST_LONGER_THAN = 5.0
RECOVERS_WITHIN = 5.0


def started_at(stack: Stack, service: str) -> list[str]:
    """When each container of the service last started, and how often Docker restarted it."""
    ids = stack.compose("ps", "-q", service).stdout.split()
    return [docker("inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", i).stdout.strip() for i in ids]


def book_ids(stack: Stack) -> set[int]:
    return {int(line) for line in stack.psql("SELECT id FROM books_book").split()}


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.2) -> float:
    """Poll until check() is true; return the moment it was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def no_stack_trace(result: load.Result) -> bool:
    return b"Traceback" not in result.body and b'File "' not in result.body


def static_asset() -> str:
    return "/static/admin/css/base.css"


def serving(stack: Stack) -> bool:
    """Whether readiness and every database-backed route answer 200 now."""
    checks = [load.send(stack.port, load.Request("GET", path)) for path in ("/readyz", *DB_BACKED)]
    return all(r.status == 200 for r in checks)


def assert_answered_through(results: list[load.Result], start: float, end: float, always_up: tuple[str, ...]) -> None:
    """Through a database outage from start to end: database routes 503, the rest 200; over the whole
    run fast answers, no trace, and nothing but 503 for a failure."""
    during = [r for r in results if start <= r.started and r.ended < end and r.request.path != "/readyz"]
    assert len(during) > 50, "the load ran through the outage"
    for result in during:
        if result.request.path in DB_BACKED:
            assert result.status == 503, result.describe()
            assert "error" in json.loads(result.body)
        else:  # liveness, static files and views without the database keep working
            assert result.status == 200, result.describe()
    slow = [r.describe() for r in results if r.elapsed > NO_REQUEST_LONGER_THAN]
    assert not slow, slow
    assert all(no_stack_trace(r) for r in results)
    assert {r.status for r in results} <= {200, 201, 503}, {r.describe() for r in results if r.status not in (200, 201)}
    assert all(r.status == 200 for r in results if r.request.path in always_up)


# --- The database stopped for 30 s -------------------------------------------------------------
def test_database_outage(stack: Stack):
    """Readiness turns, database requests fail fast with 503, liveness holds, and it all comes back."""
    restarts_before = started_at(stack, "app")
    mix = [
        load.get("/books/"),
        load.post_book(stack.api_token, "outage"),
        load.get("/sync-wrapped/"),
        load.get("/healthz"),
        load.get("/now/"),
        load.get(static_asset()),
    ]
    readyz: list[load.Result] = []
    with load.Load(stack.port, mix, threads=6, pause=0.05, max_seconds=OUTAGE_SECONDS + 60) as traffic:
        time.sleep(2)
        stack.compose("stop", "db")
        down = time.monotonic()
        # /readyz, asked again and again from the moment the database is gone.
        while time.monotonic() < down + OUTAGE_SECONDS:
            readyz.append(load.send(stack.port, load.Request("GET", "/readyz")))
            time.sleep(0.2)
        restarting = time.monotonic()
        stack.compose("start", "db")
        db_ready = wait_for(
            "the database accepts connections again",
            lambda: stack.exec("db", "pg_isready", "-h", "127.0.0.1", check=False).returncode == 0,
            timeout=60,
        )

        recovered = wait_for("the app serves from the database again", lambda: serving(stack), timeout=30)
        time.sleep(3)
    results = traffic.results

    first_503 = next(r for r in readyz if r.status == 503)
    print(f"/readyz: first 503 {first_503.ended - down:.2f} s after the database stopped")
    print(f"recovered {recovered - db_ready:.2f} s after the database accepted connections")
    assert first_503.ended - down <= READYZ_TURNS_WITHIN
    assert all(r.status == 503 and json.loads(r.body)["status"] == "unavailable" for r in readyz)

    assert_answered_through(results + readyz, down, restarting, ("/healthz", "/now/", static_asset()))

    assert recovered - db_ready <= RECOVERS_WITHIN
    assert all(r.status in (200, 201) for r in traffic.between(recovered, float("inf")))
    assert started_at(stack, "app") == restarts_before, "the app was not restarted"
    assert_pool_not_leaked(stack)


def assert_pool_not_leaked(stack: Stack) -> None:
    """After the outage the pool still holds at most its size, none stuck, and serves a burst."""
    workers = len(stack.gunicorn_workers())
    mix = [load.get("/sync-wrapped/"), load.get("/books/")]
    burst = load.Load(stack.port, mix, threads=30, pause=0, max_requests=300)
    with burst:
        wait_for("the burst ends", lambda: len(burst.results) >= 300, timeout=60)
    assert all(r.status == 200 for r in burst.results), {r.describe() for r in burst.results if r.status != 200}
    time.sleep(1)
    # The pools' connections; not the one per worker that listens for live updates (books/live.py).
    states = stack.psql(
        "SELECT state FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename = current_user AND pid <> pg_backend_pid() AND application_name <> 'books.live' "
        "AND application_name NOT LIKE 'task-worker %'",
    ).split()
    print(f"app connections after the outage and a burst: {len(states)} ({workers} worker(s))")
    assert 0 < len(states) <= workers * 10  # DB_POOL_MAX_SIZE
    assert all(state == "idle" for state in states), states


# --- The database silent for 30 s: its network cut, so nothing refuses ----------------------------
def test_silent_database(stack: Stack):
    """Requests on sockets to a database that stopped answering end within seconds, and it all comes back."""
    restarts_before = started_at(stack, "app")
    network, db = f"{stack.project}_data", stack.container_id("db")
    mix = [
        load.get("/books/"),
        load.post_book(stack.api_token, "silent"),
        load.get("/sync-wrapped/"),
        load.get("/healthz"),
        load.get("/now/"),
    ]
    readyz: list[load.Result] = []
    with load.Load(stack.port, mix, threads=6, pause=0.05, max_seconds=OUTAGE_SECONDS + 60) as traffic:
        time.sleep(2)
        docker("network", "disconnect", network, db)
        silent = time.monotonic()
        try:
            while time.monotonic() < silent + OUTAGE_SECONDS:
                readyz.append(load.send(stack.port, load.Request("GET", "/readyz")))
                time.sleep(0.2)
        finally:
            # Back under its service name, as compose attached it.
            docker("network", "connect", "--alias", "db", network, db)
        back = time.monotonic()

        recovered = wait_for("the app serves from the database again", lambda: serving(stack), timeout=30)
        time.sleep(3)
    results = traffic.results

    first_503 = next(r for r in readyz if r.status == 503)
    print(f"/readyz: first 503 {first_503.ended - silent:.2f} s after the database went silent")
    print(f"recovered {recovered - back:.2f} s after its network was back")
    print(f"slowest request: {max(r.elapsed for r in results + readyz):.2f} s")
    assert first_503.ended - silent <= READYZ_TURNS_WITHIN
    assert all(r.status == 503 for r in readyz if r.started >= first_503.ended), [r.describe() for r in readyz]

    # The point: nothing waits on the dead sockets (without the timeouts, until nginx gives up after 30 s).
    assert_answered_through(results + readyz, silent, back, ("/healthz", "/now/"))

    assert recovered - back <= RECOVERS_WITHIN
    assert all(r.status in (200, 201) for r in traffic.between(recovered, float("inf")))
    assert started_at(stack, "app") == restarts_before, "the app was not restarted"
    assert_pool_not_leaked(stack)


# --- A worker killed with SIGKILL ---------------------------------------------------------------
def test_worker_killed_with_sigkill_is_replaced(stack: Stack):
    restarts_before = started_at(stack, "app")
    workers = stack.gunicorn_workers()
    seen = len(stack.logs("app"))
    mix = [load.get("/async/?seconds=2"), load.get("/now/"), load.get("/books/")]
    with load.Load(stack.port, mix, threads=8, pause=0.05, max_seconds=60) as traffic:
        time.sleep(3)
        kill_sent = time.monotonic()
        stack.exec("app", "python", "-c", f"import os, signal; os.kill({workers[0]}, signal.SIGKILL)")
        killed = time.monotonic()

        def replaced_worker() -> bool:
            now = stack.gunicorn_workers()
            return len(now) == len(workers) and workers[0] not in now

        replaced = wait_for("gunicorn starts a new worker", replaced_worker, 30)
        time.sleep(4)
    results = traffic.results
    failed = [r for r in results if r.status != 200]
    print(f"worker {workers[0]} killed; replaced after {replaced - killed:.2f} s; {len(failed)} request(s) failed")
    # At most the requests that worker had in flight: sent before the kill, not after.
    assert all(r.started <= killed for r in failed), [r.describe() for r in failed]
    assert len(failed) <= len(traffic.in_flight_at(kill_sent)) + len(traffic.between(kill_sent, killed))
    assert all(r.status == 200 for r in traffic.between(killed, float("inf")))
    assert len(stack.gunicorn_workers()) == len(workers)
    logs = stack.logs("app")[seen:]
    assert f"Worker (pid:{workers[0]}) was sent SIGKILL" in logs, logs[-3000:]
    assert "Booting worker with pid" in logs
    assert started_at(stack, "app") == restarts_before, "only the worker was replaced, not the container"


# --- docker compose stop app, with requests and streams in flight ----------------------------
@dataclass
class Stream:
    """An SSE stream read to its end in a thread of its own."""

    port: int
    events: int = 0
    ended: float | None = None
    error: str = ""
    complete: bool = False
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", "/events/?count=60", headers={"Host": f"localhost:{self.port}"})
            response = conn.getresponse()
            while line := response.readline():
                self.events += line.startswith(b"id: ")
            # readline() returns b"" at the end of a chunked body only when the
            # last chunk arrived; a cut stream raises IncompleteRead instead.
            self.complete = response.status == 200 and response.isclosed()
        except (OSError, http.client.HTTPException) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended = time.monotonic()
            conn.close()


def test_stop_app_drains_requests_and_ends_streams(stack: Stack):
    seen = len(stack.logs("app"))
    streams = [Stream(stack.port) for _ in range(3)]
    slow = load.Load(stack.port, [load.get("/async/?seconds=3")], threads=5, pause=0, max_requests=5)
    slow.start()
    time.sleep(1.5)
    stopping = time.monotonic()
    stack.compose("stop", "app")
    stopped = time.monotonic()
    for stream in streams:
        stream.thread.join(30)
    results = slow.stop()
    print(f"docker compose stop app took {stopped - stopping:.2f} s")

    # The requests in flight completed.
    assert [r.status for r in results] == [200] * 5, [r.describe() for r in results]
    # Open streams ended properly, well within the grace period (GUNICORN_GRACEFUL_TIMEOUT, 20 s).
    for stream in streams:
        assert stream.complete and not stream.error, stream
        assert 1 <= stream.events < 60 and stream.ended is not None and stream.ended - stopping < 20
    container = stack.container_id("app")
    state = docker("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", container).stdout
    assert state.split() == ["0", "false"], state
    logs = stack.logs("app")[seen:]
    assert "events: server draining, stream ended after" in logs
    for sign in ("SIGKILL", "WORKER TIMEOUT", "Traceback", "core dumped", "Cancel ", "Exception in ASGI"):
        assert sign not in logs, logs[-3000:]

    stack.up()
    assert stack.get("/books/").status == 200
    assert stack.get("/readyz").status == 200


# --- Memory ---------------------------------------------------------------------------------------
def memory_usage(container: str) -> float:
    """MiB in use, as `docker stats` reports it (cgroup v1 and v2 alike)."""
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container).stdout.split("/")[0].strip()
    number, unit = re.fullmatch(r"([0-9.]+)\s*([KMG]i?B|B)", usage).groups()
    return float(number) * {"B": 2**-20, "KiB": 2**-10, "MiB": 1, "GiB": 2**10}[unit]


def test_memory_limit(stack: Stack):
    """The app has a memory limit and no swap; at the limit the largest process is killed, not the app."""
    container = stack.container_id("app")
    config = docker("inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}", container).stdout
    limit, swap = map(int, config.split())
    assert limit == 2**30 and swap == limit, (limit, swap)  # APP_MEMORY_LIMIT=1g, the default

    idle = memory_usage(container)
    peak = idle
    mix = [load.get("/async/?seconds=2"), load.get("/books/"), load.get("/sync-wrapped/")]
    with load.Load(stack.port, mix, threads=40, pause=0, max_seconds=8):
        for _ in range(5):
            time.sleep(1)
            peak = max(peak, memory_usage(container))
    print(f"app memory: {idle:.0f} MiB idle, {peak:.0f} MiB under 40 concurrent clients, limit {limit / 2**20:.0f} MiB")
    assert peak < limit / 2**20 / 2, "less than half the limit under this load"

    # A process that grows past the limit: the kernel kills it (exit 137), and
    # only it. Requests are served throughout, by the same workers.
    workers = stack.gunicorn_workers()
    restarts_before = started_at(stack, "app")
    hog = "chunks = []\nwhile True:\n    chunks.append(b'x' * (32 << 20))\n"
    result = stack.exec("app", "python", "-c", hog, check=False)
    assert result.returncode == 137, (result.returncode, result.stderr[-500:])
    assert stack.get("/healthz").status == 200 and stack.get("/books/").status == 200
    assert stack.gunicorn_workers() == workers
    assert started_at(stack, "app") == restarts_before


# --- A stack of its own: two replicas, redeploys, data -------------------------------------------
@pytest.fixture(scope="module")
def replicas(stack: Stack) -> Iterator[Stack]:
    """Two app replicas, with its own project name, port, network range and volumes."""
    # 64 /24s above the session stack's range (10.130.81.0/24 -> 10.130.145.0/24).
    with stack.sibling("replicas", 64, {"APP_REPLICAS": "2"}).running() as second:
        yield second


def new_version(stack: Stack, version: str) -> Path:
    """A compose file that makes the next build of the app a new image, as after a `git pull`: a label of its own."""
    release = stack.directory / f"release-{version}.yml"
    release.write_text(f"services:\n  app:\n    build:\n      labels:\n        {VERSION_LABEL}: {version}\n")
    return release


def image_version(container: str) -> str:
    return docker("inspect", "--format", f'{{{{index .Config.Labels "{VERSION_LABEL}"}}}}', container).stdout.strip()


def test_redeploy_one_replica_at_a_time_loses_no_request(replicas: Stack):
    before = set(replicas.compose("ps", "-q", "app").stdout.split())
    assert len(before) == 2
    kept = {service: replicas.container_id(service) for service in ("db", "secrets")}
    db_started = docker("inspect", "--format", "{{.State.StartedAt}}", kept["db"]).stdout
    worker = replicas.container_id("worker")
    # A new version, built with the documented `docker compose build`.
    release = new_version(replicas, "redeploy")
    build = replicas.run_script("docker", "compose", "build", "--quiet", extra_files=(release,))
    assert build.returncode == 0, build.stderr[-3000:]
    mix = [
        load.get("/now/"),
        load.post_book(replicas.api_token, "redeploy"),
        load.get("/books/"),
        load.get("/async/?seconds=0.5"),
        load.get("/readyz"),
    ]
    with load.Load(replicas.port, mix, threads=6, pause=0.02, max_seconds=300) as traffic:
        time.sleep(2)
        rollout = replicas.run_script("deploy/compose/rollout.sh", extra_files=(release,))
        time.sleep(3)
    results = traffic.results
    after = set(replicas.compose("ps", "-q", "app").stdout.split())
    print(rollout.stderr[-2000:])
    print(f"{len(results)} requests during the redeploy, statuses {sorted({r.status for r in results}, key=str)}")
    assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
    assert len(after) == 2 and not after & before, "both replicas were replaced"
    # The new version serves, the task worker included; the database never stopped.
    for container in [*after, replicas.container_id("worker")]:
        assert image_version(container) == "redeploy", container
    assert replicas.container_id("worker") != worker
    assert {service: replicas.container_id(service) for service in kept} == kept
    assert docker("inspect", "--format", "{{.State.StartedAt}}", kept["db"]).stdout == db_started
    failed = [r.describe() for r in results if r.status not in (200, 201)]
    assert not failed, failed
    assert load.created_ids(results) <= book_ids(replicas)
    # No request, not even a first attempt nginx then sent elsewhere, went to a
    # new replica before it answered /healthz (nginx/upstream/app-upstream).
    sent = proxied(replicas)
    for container in after:
        networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container).stdout)
        address = networks[f"{replicas.project}_edge"]["IPAddress"]
        started = unix_time(docker("inspect", "--format", "{{.State.StartedAt}}", container).stdout.strip())
        ready = first_healthy(container)
        first = min(t for t, tried in sent if address in tried and t >= started)
        print(f"{address}: ready {ready - started:.2f} s after its start, first request {first - ready:.2f} s later")
        assert first >= ready, f"{address} got a request {ready - first:.2f} s before it answered /healthz"


def test_up_with_a_new_version_keeps_the_database(replicas: Stack):
    """The simple deploy (docs/production-vm.md): `docker compose up --detach --build` replaces what runs the app."""
    kept = {service: replicas.container_id(service) for service in ("db", "secrets")}
    db_started = docker("inspect", "--format", "{{.State.StartedAt}}", kept["db"]).stdout
    release = new_version(replicas, "up")
    up = replicas.run_script("docker", "compose", "up", "--detach", "--build", "--wait", extra_files=(release,))
    assert up.returncode == 0, up.stderr[-3000:]
    for service in ("app", "worker", "migrate"):
        for container in replicas.compose("ps", "-a", "-q", service).stdout.split():
            assert image_version(container) == "up", (service, container)
    assert {service: replicas.container_id(service) for service in kept} == kept
    assert docker("inspect", "--format", "{{.State.StartedAt}}", kept["db"]).stdout == db_started
    assert replicas.get("/readyz").status == 200


def unix_time(timestamp: str) -> float:
    """An RFC 3339 time (Docker's, with nanoseconds; the app's logs') as Unix time."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", timestamp).replace("Z", "+00:00")).timestamp()


def first_healthy(container: str) -> float:
    """When an app container first answered /healthz with 200, from its access lines (GUNICORN_ACCESS_LOG)."""
    for line in docker("logs", container).stdout.splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("path") == "/healthz" and entry.get("status") == 200:
            return unix_time(entry["time"])
    raise AssertionError(f"{container} never answered /healthz")


def test_books_survive_down_up_and_kill_9_of_the_database(replicas: Stack):
    with load.Load(replicas.port, [load.post_book(replicas.api_token, "durable")], threads=4, pause=0.02) as traffic:
        time.sleep(3)
        docker("kill", "--signal", "KILL", replicas.container_id("db"))
        time.sleep(2)
        replicas.compose("start", "db")
        restarted = time.monotonic()
        wait_for("writes succeed again", lambda: any(r.status == 201 for r in traffic.between(restarted, 1e12)), 30)
        time.sleep(2)
    acknowledged = load.created_ids(traffic.results)
    statuses = {r.status for r in traffic.results}
    print(f"{len(acknowledged)} books acknowledged around a kill -9 of the database; statuses {statuses}")
    assert len(acknowledged) > 20 and statuses <= {201, 503}, statuses
    assert acknowledged <= book_ids(replicas)

    replicas.compose("down", "--timeout", "30")
    replicas.up()
    assert acknowledged <= book_ids(replicas)
    listing = replicas.get("/books/").text().split(",")
    titles = {json.loads(r.body)["title"] for r in traffic.results if r.status == 201}
    assert titles <= set(listing)


def test_backup_and_restore_round_trip(replicas: Stack, tmp_path: Path):
    kept = [f"kept-{n}-{time.time_ns()}" for n in range(3)]
    for title in kept:
        assert replicas.post_json("/books/", {"title": title}, token=replicas.api_token).status == 201
    backed_up = book_ids(replicas)
    dump = tmp_path / "app.dump"
    backup = replicas.run_script("deploy/db/backup.sh", str(dump))
    assert backup.returncode == 0 and dump.stat().st_size > 0, backup.stderr

    later = replicas.post_json("/books/", {"title": "written after the backup"}, token=replicas.api_token)
    assert later.status == 201
    # The documented restore: stop the app, restore, start it again.
    replicas.compose("stop", "app")
    restore = replicas.run_script("deploy/db/restore.sh", str(dump))
    assert restore.returncode == 0, restore.stderr
    replicas.up()
    assert book_ids(replicas) == backed_up
    listing = replicas.get("/books/").text().split(",")
    assert set(kept) <= set(listing) and "written after the backup" not in listing
    # The id sequence came back too: a new book gets a fresh id.
    new = replicas.post_json("/books/", {"title": "after the restore"}, token=replicas.api_token)
    assert new.status == 201 and new.json()["id"] > max(backed_up)
