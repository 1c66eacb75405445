"""Shared fixtures for the app's tests (run inside the test image)."""

from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient


@pytest.fixture
def call_async() -> Callable[..., Any]:
    """Run a coroutine function from a sync test.

    async_to_sync sends the ORM's thread-sensitive work back to the test's own
    thread, so async views see the test's database transaction.
    """

    def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return async_to_sync(func)(*args, **kwargs)

    return run


@pytest.fixture
def aclient(call_async: Callable[..., Any]) -> "SyncAsyncClient":
    return SyncAsyncClient(call_async)


class SyncAsyncClient:
    """Django's AsyncClient (the ASGI request path), driven from sync tests."""

    def __init__(self, call_async: Callable[..., Any]) -> None:
        self._client = AsyncClient()
        self._call = call_async

    def get(self, path: str, data: Any = None, **kwargs: Any) -> Any:
        return self._call(self._client.get, path, data, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self._call(self._client.head, path, **kwargs)

    def post(self, path: str, data: Any = None, **kwargs: Any) -> Any:
        return self._call(self._client.post, path, data, **kwargs)

    def streaming_body(self, response: Any) -> bytes:
        async def collect() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return self._call(collect)
