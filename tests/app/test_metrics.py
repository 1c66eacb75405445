"""Metrics: counted per route on the event loop, served only on the metrics port; the work in flight."""

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from asgi_client import Client, Message, asgi_request, body, http_scope, status
from django.http import StreamingHttpResponse
from django.test import override_settings

from config.asgi import application
from core import metrics

pytestmark = pytest.mark.django_db(transaction=True)

METRICS_SERVER = ("testserver", 9100)


def served() -> Callable:
    # The application config.asgi serves, built anew: it reads METRICS_PORT when it is built.
    return type(application)()


def on_metrics_port(path: str) -> list[dict]:
    return asyncio.run(asgi_request(served(), path, server=METRICS_SERVER))


def scrape() -> str:
    messages = on_metrics_port("/metrics")
    assert status(messages) == 200
    assert dict(messages[0]["headers"])[b"Content-Type"].startswith(b"text/plain; version=")
    return body(messages).decode()


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}} in:\n{text[:2000]}")


@override_settings(METRICS_PORT="9100")
def test_requests_counted_by_route():
    asgi = Client(served())
    before = scrape()
    try:
        start = sample(before, "app_requests_total", method="GET", route="now/", status="200")
    except AssertionError:
        start = 0.0
    for _ in range(3):
        assert asgi.get("/now/").status_code == 200
    assert asgi.get("/books/nope/").status_code == 404
    after = scrape()
    assert sample(after, "app_requests_total", method="GET", route="now/", status="200") == start + 3
    assert sample(after, "app_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert sample(after, "app_request_duration_seconds_count", method="GET", route="now/") >= 3
    assert "app_db_pool_connections" in after


@override_settings(METRICS_PORT="9100")
def test_metrics_are_not_on_the_public_port():
    assert Client(served()).get("/metrics").status_code == 404


@override_settings(METRICS_PORT="9100")
def test_the_metrics_port_serves_nothing_else():
    assert status(on_metrics_port("/now/")) == 404


@override_settings(METRICS_PORT="")
def test_no_metrics_port_no_metrics():
    assert status(on_metrics_port("/metrics")) == 404


# --- The work in flight: what an autoscaler reads (deploy/k8s/components/keda) ---------------
def total(text: str, name: str) -> float:
    """The sum of a metric's samples, whatever their labels (one per worker, `pid`, with several)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((f"{name} ", f"{name}{{"))]
    assert values, f"no sample of {name} in:\n{text[:2000]}"
    return sum(values)


async def scrape_async(app: Callable) -> str:
    messages = await asgi_request(app, "/metrics", server=METRICS_SERVER)
    assert status(messages) == 200
    return body(messages).decode()


async def wait_for(app: Callable, name: str, value: float, timeout: float = 5) -> float:
    """The metric's total once it equals `value`, or what it is when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        current = total(await scrape_async(app), name)
        if current == value or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.02)


@override_settings(METRICS_PORT="9100")
def test_a_request_counts_in_flight_while_it_is_held_and_not_after():
    app = served()

    async def scenario() -> tuple[float, float, int, float]:
        before = total(await scrape_async(app), "app_requests_in_flight")
        held = asyncio.create_task(asgi_request(app, "/async/", b"seconds=1.5"))
        during = await wait_for(app, "app_requests_in_flight", before + 1)
        answered = status(await held)
        return before, during, answered, total(await scrape_async(app), "app_requests_in_flight")

    before, during, answered, after = asyncio.run(scenario())
    assert answered == 200
    assert during == before + 1, "the sleeping request is in flight"
    assert after == before, "answered: no longer in flight"


@override_settings(METRICS_PORT="9100")
def test_a_stream_counts_as_open_while_it_is_sent_and_not_as_a_request():
    app = served()

    async def scenario() -> tuple[dict, dict, bytes, dict]:
        names = ("app_requests_in_flight", "app_streams_open")

        async def now() -> dict:
            text = await scrape_async(app)
            return {name: total(text, name) for name in names}

        before = await now()
        stream = asyncio.create_task(asgi_request(app, "/events/", b"count=3"))
        await wait_for(app, "app_streams_open", before["app_streams_open"] + 1)
        during = await now()
        messages = await stream
        return before, during, body(messages), await now()

    before, during, sent, after = asyncio.run(scenario())
    assert sent.count(b"event: tick") == 3
    assert during["app_streams_open"] == before["app_streams_open"] + 1
    # The view has returned the stream: it no longer counts against the request bound.
    assert during["app_requests_in_flight"] == before["app_requests_in_flight"]
    assert after == before, "the stream ended: nothing open, nothing in flight"


@override_settings(METRICS_PORT="9100")
def test_a_stream_whose_client_leaves_is_no_longer_counted():
    app = served()

    async def client(leave: asyncio.Event) -> None:
        """Asks for 60 events a second apart, and is gone when `leave` is set."""
        asked = False

        async def receive() -> Message:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass

        await asyncio.wait_for(app(http_scope("/events/", b"count=60"), receive, send), timeout=10)

    async def scenario() -> tuple[float, float, float, float]:
        before = total(await scrape_async(app), "app_streams_open")
        leave = asyncio.Event()
        started = time.monotonic()
        stream = asyncio.create_task(client(leave))
        during = await wait_for(app, "app_streams_open", before + 1)
        leave.set()
        await stream  # the app returns once it sees the client gone, not after 60 events
        after = await wait_for(app, "app_streams_open", before)
        return before, during, after, time.monotonic() - started

    before, during, after, elapsed = asyncio.run(scenario())
    assert during == before + 1
    assert after == before, "the client left: its stream is no longer open"
    assert elapsed < 30, "ended by the client's leaving, not by its 60 events"


def test_a_stream_from_a_sync_iterator_is_counted_while_it_is_read():
    response = StreamingHttpResponse(iter([b"one", b"two"]))
    metrics.count_stream(response)
    before = total(metrics.render().decode(), "app_streams_open")
    chunks = iter(response)
    first = next(chunks)
    during = total(metrics.render().decode(), "app_streams_open")
    rest = list(chunks)
    after = total(metrics.render().decode(), "app_streams_open")
    assert [first, *rest] == [b"one", b"two"]
    assert (during, after) == (before + 1, before)


# As gunicorn runs the app: each worker writes to PROMETHEUS_MULTIPROC_DIR, a scrape adds them up.
MULTIPROCESS_WORKER = """
import os, django
django.setup()
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from core import metrics
metrics.REQUESTS_IN_FLIGHT.inc(3)
metrics.STREAMS_OPEN.inc(2)
metrics.STREAMS_OPEN.dec()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print("PID", os.getpid())
print(generate_latest(registry).decode())
"""


def test_under_gunicorn_the_work_in_flight_is_reported_per_worker(tmp_path: Path):
    environ = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    run = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_WORKER],
        cwd="/srv/app",
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    pid = re.search(r"^PID (\d+)$", run.stdout, re.M).group(1)
    assert f'app_requests_in_flight{{pid="{pid}"}} 3.0' in run.stdout, run.stdout
    assert f'app_streams_open{{pid="{pid}"}} 1.0' in run.stdout, run.stdout


def test_without_the_task_worker_installed_there_are_no_queue_metrics_to_read():
    # docs/adopt.md: a project may leave out the task apps; /metrics then never asks for the queue's table.
    from django.conf import settings

    without = [app for app in settings.INSTALLED_APPS if app not in ("worker", "django_tasks_db")]
    with override_settings(INSTALLED_APPS=without):
        text = metrics.render().decode()
    assert "# TYPE app_requests_in_flight gauge" in text
    assert "# TYPE app_tasks gauge" not in text and "app_task_oldest_ready_seconds" not in text
