"""Metrics: counted per route on the event loop, served only on the metrics port."""

import asyncio
from collections.abc import Callable

import pytest
from asgi_client import Client, asgi_request, body, status
from django.test import override_settings

from config.asgi import application

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
