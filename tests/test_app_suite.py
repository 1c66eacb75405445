"""The app's own tests (tests/app), run inside the test image against the stack's Postgres."""

from __future__ import annotations

import re

from tests.stack import Stack


def test_app_suite_passes_in_the_image(stack: Stack):
    result = stack.compose("run", "--rm", "tests", check=False, with_tests=True, timeout=900)
    output = result.stdout + result.stderr
    print(output[-4000:])
    assert result.returncode == 0, output[-20000:]
    summary = re.search(r"(\d+) passed", output)
    assert summary and int(summary.group(1)) > 50, "the app suite ran fewer tests than it has"
