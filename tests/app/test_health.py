"""The probes: /healthz never needs the database, /readyz answers within its bound."""

import time

import pytest
from django.http import HttpResponse
from django.test import AsyncClient

from core import health

pytestmark = pytest.mark.django_db


def test_healthz(aclient):
    response = aclient.get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


def test_probes_answer_any_host(aclient):
    # A kubelet or load balancer probes by IP address, which ALLOWED_HOSTS does not list.
    assert aclient.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert aclient.get("/readyz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert aclient.get("/now/", headers={"Host": "10.1.2.3:8000"}).status_code == 400


def test_readyz_with_a_database(aclient):
    response = aclient.get("/readyz")
    assert response.status_code == 200 and response.content == b"ready\n"


def test_readyz_reports_a_failing_database(aclient, monkeypatch):
    def broken() -> None:
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "_ping_database", broken)
    response = aclient.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "database unavailable: ConnectionError"}


def test_readyz_never_hangs(call_async, monkeypatch):
    monkeypatch.setattr(health, "_ping_database", lambda: time.sleep(health.READINESS_TIMEOUT + 3))

    async def timed_probe() -> tuple[HttpResponse, float]:
        # Timed on the event loop: when the probe answers, not when the stuck
        # thread it left behind finishes.
        started = time.monotonic()
        response = await AsyncClient().get("/readyz")
        return response, time.monotonic() - started

    response, elapsed = call_async(timed_probe)
    assert response.status_code == 503
    assert f"within {health.READINESS_TIMEOUT:g} s" in response.json()["reason"]
    assert elapsed < health.READINESS_TIMEOUT + 1.5


def test_healthz_does_not_touch_the_database(aclient, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert aclient.get("/healthz").status_code == 200
