"""Shared fixtures for the app's tests (run inside the test image, against the stack's Postgres)."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgi_client import Client
from asgiref.sync import async_to_sync
from django.db.backends.signals import connection_created


@pytest.fixture(scope="session", autouse=True)
def test_database(django_db_setup: None) -> None:
    """The test database, made before the first test, whichever runs first.

    Django's pool keeps the database it was opened on: a test without the database that still opens the
    pool (test_draining's stream, through the middleware) would otherwise open it on the stack's own, and
    the migrations and every test after it would run there, not in the test database.
    """


@pytest.fixture
def asgi() -> Client:
    """Requests through config.asgi.application (the production handler and middleware), as a server makes them."""
    return Client()


@pytest.fixture
def call_async() -> Callable[..., Any]:
    """Run a coroutine function from a sync test, as async_to_sync does in a sync caller."""

    def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return async_to_sync(func)(*args, **kwargs)

    return run


@pytest.fixture
def queries_anywhere() -> Iterator[list[str]]:
    """The SQL every thread of the process runs during the test, not only the test's own (as Django's counters do)."""
    executed: list[str] = []

    def record(execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
        executed.append(sql)
        return execute(sql, params, many, context)

    def watch(connection: Any, **kwargs: Any) -> None:
        if record not in connection.execute_wrappers:
            connection.execute_wrappers.append(record)

    connection_created.connect(watch)
    try:
        yield executed
    finally:
        connection_created.disconnect(watch)
