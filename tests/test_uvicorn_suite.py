"""uvicorn's and uvicorn-worker's own tests pass with the project's protocol and worker in place of theirs.

The uvicorn-suite service (tests/compose.test.yml, harness in tests/uvicorn_suite)
runs uvicorn's tests that take the HTTP protocol class with HttpToolsProtocol,
H11Protocol and deploy/gunicorn's HttpToolsOneWriteProtocol, and uvicorn-worker's
tests with its workers and deploy/gunicorn's; it fails if a test passes with
uvicorn's class but not with the project's, or if the project's ran in fewer tests.
It takes about 4 minutes, 2.5 of them uvicorn-worker's gunicorn processes.
"""

from __future__ import annotations

import re

from harness.stack import Stack


def test_uvicorns_tests_pass_with_the_projects_protocol_and_worker(stack: Stack):
    result = stack.compose("run", "--rm", "uvicorn-suite", with_tests=True, check=False, timeout=1200)
    start = result.stdout.find("=== summary")
    output = result.stdout[start:] if start >= 0 else result.stdout + result.stderr
    print(output[:30000])
    assert result.returncode == 0, (result.stdout + result.stderr)[-30000:]
    rows = dict(re.findall(r"^  (\S+) +(?:reference|project|other) +(\d+) ", output, re.MULTILINE))
    assert "HttpToolsOneWriteProtocol" in rows and "project-UvicornWorker" in rows, "the summary names no project class"
    assert int(rows["HttpToolsOneWriteProtocol"]) >= int(rows["HttpToolsProtocol"]) > 200, "too few protocol tests ran"
    assert int(rows["project-UvicornWorker"]) >= 10, "too few worker tests ran with the project's worker"
