"""Host-side fixtures: the images, built once, and the running stacks for the whole session.

`stack` is the stack as configured by default. `stock_stack` is a second one
with DJANGO_STOCK_HANDLER=true (Django's own handler and middleware), for the
tests that run in both modes; when any collected test asks for it, it starts
beside `stack`, at the same time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.stack import Stack

WANTS_STOCK = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[WANTS_STOCK] = any("stock_stack" in getattr(item, "fixturenames", ()) for item in items)


@pytest.fixture(scope="session")
def stacks(request: pytest.FixtureRequest) -> Iterator[dict[str, Stack]]:
    """The running stacks by mode: "blueprint" always, "stock" when a collected test asks for it."""
    if shutil.which("docker") is None:
        pytest.fail("docker is not on PATH: the test command needs Docker with compose v2")
    running = {"blueprint": Stack()}
    if request.config.stash.get(WANTS_STOCK, False):
        # 32 /24s above the session stack's range (10.130.81.0/24 -> 10.130.113.0/24).
        running["stock"] = running["blueprint"].sibling("stock", 32, {"DJANGO_STOCK_HANDLER": "true"})
    # A run that was interrupted may have left its stacks behind.
    for each in running.values():
        each.compose("down", "--volumes", "--remove-orphans", check=False, with_tests=True)
    try:
        running["blueprint"].compose("build", "--quiet", with_tests=True, timeout=1200)
        with ThreadPoolExecutor() as pool:
            for started in [pool.submit(each.up) for each in running.values()]:
                started.result()
        yield running
    finally:
        for each in running.values():
            each.down()


@pytest.fixture(scope="session")
def stack(stacks: dict[str, Stack]) -> Stack:
    return stacks["blueprint"]


@pytest.fixture(scope="session")
def stock_stack(stacks: dict[str, Stack]) -> Stack:
    """The same stack serving with Django's own ASGI handler and middleware (DJANGO_STOCK_HANDLER=true)."""
    return stacks["stock"]
