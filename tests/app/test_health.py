"""The probes: /healthz never needs the database, /readyz answers within its bound, at most a query a second."""

import asyncio
import logging
import threading
import time

import pytest
from asgi_client import asgi_request, status

from core import health

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_readiness(monkeypatch):
    """Each test starts with nothing cached."""
    monkeypatch.setattr(health, "readiness", health.Readiness())


def test_healthz(asgi):
    response = asgi.get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


def test_probes_answer_any_host(asgi):
    # A kubelet or load balancer probes by IP address, which ALLOWED_HOSTS does not list.
    assert asgi.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert asgi.get("/readyz", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert asgi.get("/now/", headers={"Host": "10.1.2.3:8000"}).status_code == 400


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_a_probe_answers_get_and_head_only(asgi, path):
    # Answered before any other middleware, with no URL route behind it: another
    # method gets a 405 that says what is allowed, not a page of the app's.
    assert asgi.head(path).status_code == 200
    response = asgi.post(path)
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"


def test_readyz_with_a_database(asgi):
    response = asgi.get("/readyz")
    assert response.status_code == 200 and response.content == b"ready\n"


def test_readyz_reports_a_failing_database_without_saying_how(asgi, monkeypatch, caplog):
    def broken() -> None:
        raise ConnectionError("refused by db.internal:5432")

    monkeypatch.setattr(health, "_ping_database", broken)
    with caplog.at_level(logging.WARNING, logger="core.health"):
        response = asgi.get("/readyz")
    assert response.status_code == 503
    # Whoever asks learns that it is not ready; the log says why.
    assert response.json() == {"status": "unavailable", "reason": "database unavailable"}
    assert "ConnectionError: refused by db.internal:5432" in caplog.text


def test_readyz_never_hangs(asgi, monkeypatch):
    answered = threading.Event()
    # Stuck until the answer has gone out, or for the bound plus 3 s: an app that waited for it answers that late.
    monkeypatch.setattr(health, "_ping_database", lambda: answered.wait(health.READINESS_TIMEOUT + 3))
    # Timed until the app answers, not until the stuck thread it left behind finishes.
    response = asgi.get("/readyz", on_send=lambda message: answered.set())
    assert response.status_code == 503
    # Generous: the bound plus whatever a loaded machine adds, well short of the stuck call.
    assert response.elapsed < health.READINESS_TIMEOUT + 2


def test_healthz_does_not_touch_the_database(asgi, queries_anywhere):
    assert asgi.get("/healthz").status_code == 200
    assert queries_anywhere == []
    assert asgi.get("/readyz").status_code == 200
    assert queries_anywhere == ["SELECT 1"]  # the control: a query in the app's threads is seen


def test_readyz_queries_at_most_once_per_cache_period_however_often_asked(asgi, queries_anywhere):
    # 200 probes at once in one worker: they share the one check in flight.
    async def flood() -> list[int]:
        answers = await asyncio.gather(*(asgi_request(asgi.app, "/readyz") for _ in range(200)))
        return [status(messages) for messages in answers]

    assert asyncio.run(flood()) == [200] * 200
    assert queries_anywhere == ["SELECT 1"]
    # Asked again within the cache period: the same answer, no query.
    for _ in range(20):
        assert asgi.get("/readyz").status_code == 200
    assert len(queries_anywhere) <= 2  # a second one only if the machine took longer than the period
    time.sleep(health.READINESS_CACHE + 0.1)
    before = len(queries_anywhere)
    assert asgi.get("/readyz").status_code == 200
    assert len(queries_anywhere) == before + 1


def test_a_failure_is_cached_too_then_checked_again(asgi, monkeypatch):
    calls: list[float] = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("refused")

    monkeypatch.setattr(health, "_ping_database", broken)
    assert [asgi.get("/readyz").status_code for _ in range(10)] == [503] * 10
    assert len(calls) in (1, 2)
    monkeypatch.setattr(health, "_ping_database", lambda: None)
    time.sleep(health.READINESS_CACHE + 0.1)
    assert asgi.get("/readyz").status_code == 200


def test_a_probe_that_leaves_does_not_cancel_the_check_others_wait_for(asgi, monkeypatch):
    monkeypatch.setattr(health, "_ping_database", lambda: time.sleep(0.3))

    async def one_leaves() -> int:
        leaving = asyncio.ensure_future(asgi_request(asgi.app, "/readyz"))
        staying = asyncio.ensure_future(asgi_request(asgi.app, "/readyz"))
        await asyncio.sleep(0.1)
        leaving.cancel()
        return status(await staying)

    assert asyncio.run(one_leaves()) == 200
