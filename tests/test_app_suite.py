"""The app's own tests (tests/app) in the test image against the stack's Postgres, as `make test-app` runs them."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

from harness.stack import ROOT, Stack

# Skips the suite may report, by reason. None: a skipped test is one that did not run.
EXPECTED_SKIPS: set[str] = set()


def test_app_suite_passes_in_the_image(stack: Stack):
    compose = stack.compose_args(with_tests=True)
    command = [*compose, "run", "--rm", "tests"]
    if shutil.which("make"):
        command = ["make", "--no-print-directory", "test-app", f"COMPOSE_TEST={shlex.join(compose)}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    print(output[-4000:])
    assert result.returncode == 0, output[-20000:]
    summary = re.search(r"^=+ (.*) in [\d.]+s", output, re.MULTILINE)
    assert summary, output[-2000:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary.group(1))}
    assert counts.get("passed", 0) > 0 and set(counts) <= {"passed", "skipped", "warning", "warnings"}, summary.group(0)
    # -ra (tests/app/pytest.ini) lists each skip with its reason.
    skipped = re.findall(r"^SKIPPED \[(\d+)\] \S+: (.*)$", output, re.MULTILINE)
    assert {reason for _, reason in skipped} <= EXPECTED_SKIPS, skipped
    assert sum(int(n) for n, _ in skipped) == counts.get("skipped", 0), summary.group(0)
