"""The probes: /healthz never needs the database, /readyz answers within its bound."""

import time

import pytest

from core import health

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz(asgi):
    response = asgi.get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


def test_probes_answer_any_host(asgi):
    # A kubelet or load balancer probes by IP address, which ALLOWED_HOSTS does not list.
    assert asgi.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert asgi.get("/readyz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert asgi.get("/now/", headers={"Host": "10.1.2.3:8000"}).status_code == 400


def test_readyz_with_a_database(asgi):
    response = asgi.get("/readyz")
    assert response.status_code == 200 and response.content == b"ready\n"


def test_readyz_reports_a_failing_database(asgi, monkeypatch):
    def broken() -> None:
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "_ping_database", broken)
    response = asgi.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "database unavailable: ConnectionError"}


def test_readyz_never_hangs(asgi, monkeypatch):
    monkeypatch.setattr(health, "_ping_database", lambda: time.sleep(health.READINESS_TIMEOUT + 3))
    # Timed until the app answers, not until the stuck thread it left behind finishes.
    response = asgi.get("/readyz")
    assert response.status_code == 503
    assert f"within {health.READINESS_TIMEOUT:g} s" in response.json()["reason"]
    assert response.elapsed < health.READINESS_TIMEOUT + 1.5


def test_healthz_does_not_touch_the_database(asgi, queries_anywhere):
    assert asgi.get("/healthz").status_code == 200
    assert queries_anywhere == []
    assert asgi.get("/readyz").status_code == 200
    assert queries_anywhere == ["SELECT 1"]  # the control: a query in the app's threads is seen
