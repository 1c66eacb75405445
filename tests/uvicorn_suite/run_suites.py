"""Run uvicorn's and uvicorn-worker's own tests against the project's protocol and worker; compare.

The command of the `uvicorn-suite` image (Dockerfile), run by tests/test_uvicorn_suite.py.
Each upstream suite runs in its own pytest session (both name their package `tests`), with
suite_plugin.py adding the project's classes as subjects. Prints the outcomes per subject
and exits non-zero when a suite fails, or when the project's class fails a test that uvicorn's
passes, or ran in fewer tests than uvicorn's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite_report import Summary, load, summarize

HOME = Path(os.environ.get("UVICORN_SUITE_HOME", "/srv/uvicorn-suite"))


@dataclass
class Suite:
    name: str
    root: Path  # the unpacked sdist: its pytest settings and tests/
    modules: list[str]
    # Upstream's addopts, less pytest-xdist's -n: the suites run in one process here.
    addopts: str | None = None


def modules_over_http_protocols(root: Path) -> list[str]:
    """uvicorn's test modules that take the HTTP protocol class as a parameter."""
    found = sorted(
        str(path.relative_to(root))
        for path in (root / "tests").rglob("test_*.py")
        if "http_protocol_cls" in path.read_text(encoding="utf-8")
    )
    if "tests/protocols/test_http.py" not in found:
        raise SystemExit(f"tests/protocols/test_http.py is not among uvicorn's protocol tests: {found}")
    return found


def suites() -> list[Suite]:
    uvicorn = HOME / "uvicorn"
    return [
        Suite("uvicorn", uvicorn, modules_over_http_protocols(uvicorn), "-rxXs --strict-config --strict-markers"),
        Suite("uvicorn-worker", HOME / "uvicorn-worker", ["tests/test_workers.py"]),
    ]


def run(suite: Suite, report_path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-p", "suite_plugin", "--suite-report", str(report_path),
               # The app's Django plugin (from the test image) has no settings to load here.
               "-p", "no:django", "-p", "no:cacheprovider", "-q", "-rfEsxX",
               # A test that hangs ends its session, with every thread's traceback.
               "-o", "faulthandler_timeout=60", "-o", "faulthandler_exit_on_timeout=true"]  # fmt: skip
    if suite.addopts is not None:
        command += ["-o", f"addopts={suite.addopts}"]
    print(f"\n=== {suite.name}: {' '.join(suite.modules)}", flush=True)
    exitstatus = subprocess.run([*command, *suite.modules], cwd=suite.root, check=False).returncode
    return load(report_path, exitstatus)


def main() -> int:
    started = time.monotonic()
    summaries: list[Summary] = []
    with tempfile.TemporaryDirectory() as scratch:
        for suite in suites():
            summaries.append(summarize(suite.name, run(suite, Path(scratch) / f"{suite.name}.json")))
    print(f"\n=== summary ({time.monotonic() - started:.0f} s)")
    for summary in summaries:
        print("\n".join(summary.lines))
    problems = [problem for summary in summaries for problem in summary.problems]
    if problems:
        print("\nFAILED:\n" + "\n".join(problems))
        return 1
    print("\nOK: every test that passes with uvicorn's classes passes with the project's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
