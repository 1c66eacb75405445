"""Host-side fixtures: the images, built once, and one running stack for the whole session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if shutil.which("docker") is None:
        pytest.fail("docker is not on PATH: the test command needs Docker with compose v2")
    stack = Stack()
    # A run that was interrupted may have left its stack behind.
    stack.compose("down", "--volumes", "--remove-orphans", check=False, with_tests=True)
    try:
        stack.compose("build", "--quiet", with_tests=True, timeout=1200)
        stack.up()
        yield stack
    finally:
        stack.down()
