"""Metrics: counted per route on the event loop, served only on the metrics port."""

import asyncio

import pytest
from asgi_client import asgi_request, body, status
from django.test import override_settings

from core.handlers import ASGIHandler

pytestmark = pytest.mark.django_db

METRICS_SERVER = ("testserver", 9100)


def on_metrics_port(path: str) -> list[dict]:
    return asyncio.run(asgi_request(ASGIHandler(), path, server=METRICS_SERVER))


def scrape(call_async) -> str:
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
def test_requests_counted_by_route(aclient, call_async):
    before = scrape(call_async)
    try:
        start = sample(before, "app_requests_total", method="GET", route="now/", status="200")
    except AssertionError:
        start = 0.0
    for _ in range(3):
        assert aclient.get("/now/").status_code == 200
    assert aclient.get("/books/nope/").status_code == 404
    after = scrape(call_async)
    assert sample(after, "app_requests_total", method="GET", route="now/", status="200") == start + 3
    assert sample(after, "app_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert sample(after, "app_request_duration_seconds_count", method="GET", route="now/") >= 3
    assert "app_db_pool_connections" in after


@override_settings(METRICS_PORT="9100")
def test_metrics_are_not_on_the_public_port(aclient):
    assert aclient.get("/metrics").status_code == 404


@override_settings(METRICS_PORT="9100")
def test_the_metrics_port_serves_nothing_else():
    assert status(on_metrics_port("/now/")) == 404


@override_settings(METRICS_PORT="")
def test_no_metrics_port_no_metrics():
    assert status(on_metrics_port("/metrics")) == 404
