"""The drain notice: the worker tells the app on SIGTERM, and open event streams end properly."""

import asyncio
import importlib
import os
import time

import pytest

from core import draining


@pytest.fixture(autouse=True)
def not_draining(monkeypatch):
    monkeypatch.setattr(draining, "_draining", False)


def test_sleep_sleeps_when_not_draining(call_async):
    started = time.monotonic()
    assert call_async(draining.sleep, 0.2) is False
    assert time.monotonic() - started >= 0.2


def test_sleep_wakes_as_the_drain_begins(call_async):
    async def sleep_then_drain() -> tuple[bool, float]:
        started = time.monotonic()
        sleeper = asyncio.ensure_future(draining.sleep(30))
        await asyncio.sleep(0.1)
        draining.begin()
        return await sleeper, time.monotonic() - started

    woke, elapsed = call_async(sleep_then_drain)
    assert woke is True and elapsed < 5
    assert draining.is_draining()
    assert call_async(draining.sleep, 30) is True  # once draining, at once


def test_events_stream_ends_properly_when_the_drain_begins(asgi, caplog):
    events = []

    def drain_after_two(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            events.append(message["body"])
            if len(events) == 2:
                draining.begin()

    response = asgi.get("/events/", {"count": "60"}, on_send=drain_after_two)
    assert response.status_code == 200
    assert len(events) == 2 and response.elapsed < 5  # not 60 events, not 60 s
    assert response.messages[-1] == {"type": "http.response.body"}  # ended, not cut off
    assert "server draining, stream ended after 2 of 60 events" in caplog.text


def test_worker_calls_the_apps_on_drain_before_shutting_down(monkeypatch):
    import workers
    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from uvicorn.config import Config as UvicornConfig

    importlib.import_module("config.asgi")
    cfg = Config()
    cfg.set("wsgi_app", "config.asgi:application")
    worker = workers.UvicornWorker(age=1, ppid=os.getpid(), sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg))
    assert worker._drain_hook() is draining.begin

    calls = []
    server = workers.DrainingServer(UvicornConfig(app=None), on_drain=lambda: calls.append("drain"))
    # Nothing was started: no listening sockets, and no waiting for connections.
    server.servers, server.force_exit = [], True
    asyncio.run(server.shutdown())
    assert calls == ["drain"]
