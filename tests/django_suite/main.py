"""Run part of Django's own test suite twice, stock and with the blueprint's classes, and compare.

The two runs (runtests.py with suite_settings; see suite_runner.py) go at once.
Exit status 0: every test that fails or errors with core.handlers and
core.dropins in place also does so with Django's own classes. 1: some fail
only with the blueprint's (listed, with tracebacks). 2: a run broke or the
substitution did not hold, so the comparison would mean nothing.
Arguments, if any, name the test modules to run instead of MODULES.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS_DIR = Path(os.environ.get("DJANGO_TESTS_DIR", "/srv/django-tests"))
# The request path: the handler, the middleware, and what goes through them.
# auth_tests takes most of the time (its password hashing); the rest take seconds.
MODULES = [
    *["asgi", "handlers", "async", "signals", "requests_tests", "responses", "httpwrappers", "file_uploads"],
    *["middleware", "middleware_exceptions", "csrf_tests", "sessions_tests", "messages_tests", "auth_tests"],
    *["test_client", "test_client_regress", "view_tests", "generic_views", "decorators", "shortcuts"],
    *["conditional_processing", "context_processors", "urlpatterns_reverse", "logging_tests"],
    *["flatpages_tests", "redirects_tests", "staticfiles_tests"],
    # The CSP middleware's own tests are in middleware (test_csp); these are the admin under it.
    "admin_views.test_csp",
]
MODES = ("stock", "blueprint")


def start(mode: str, workdir: Path, modules: list[str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DJANGO_SUITE_MODE": mode,
        "DJANGO_SUITE_REPORT": str(workdir / f"{mode}.json"),
    }
    command = [sys.executable, str(TESTS_DIR / "runtests.py"), "--settings=suite_settings", "--parallel=1",
               "--noinput", "--verbosity=1", *modules]  # fmt: skip
    with (workdir / f"{mode}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=TESTS_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def failing(report: dict) -> dict[str, str]:
    """Test id -> traceback, for every failure, error and unexpected success of a run."""
    found = {**report["failures"], **report["errors"]}
    found.update({test: "unexpected success" for test in report["unexpected_successes"]})
    return found


def summary(mode: str, report: dict, log: str) -> str:
    took = re.search(r"^Ran \d+ tests? in ([\d.]+)s$", log, re.MULTILINE)
    return (
        f"{mode + ':':<11}{report['tests_run']} tests run, {len(failing(report))} failures+errors,"
        f" {report['skipped']} skipped, {report['expected_failures']} expected failures"
        f" (tests took {took.group(1) if took else '?'} s)"
    )


def broken_run(mode: str, report: dict | None, log: str, every_probe: bool) -> str | None:
    """Why a run's result cannot be compared, or None.

    every_probe: each probed function of the blueprint must have been called,
    not merely one of them (the full set of modules calls them all).
    """
    if report is None:
        return f"the {mode} run wrote no result; the end of its output:\n{log[-6000:]}"
    if report["substitution_problems"]:
        return "the substitution did not hold:\n" + "\n".join(report["substitution_problems"])
    if mode == "blueprint":
        if not report["replaced"]:
            return "nothing was substituted in the blueprint run"
        calls = report["blueprint_calls"]
        idle = [name for name, count in calls.items() if not count]
        if not calls or (every_probe and idle) or len(idle) == len(calls):
            return f"the blueprint's code was never called: {', '.join(idle) or 'no probe'}"
    return None


def main(modules: list[str]) -> int:
    print(f"Django's tests ({' '.join(modules)}), stock and with the blueprint's classes, both at once", flush=True)
    with tempfile.TemporaryDirectory(prefix="django-suite-") as tmp:
        workdir = Path(tmp)
        began = time.monotonic()
        runs = {mode: start(mode, workdir, modules) for mode in MODES}
        codes = {mode: run.wait() for mode, run in runs.items()}
        wall = time.monotonic() - began
        reports: dict[str, dict | None] = {}
        logs: dict[str, str] = {}
        for mode in MODES:
            path = workdir / f"{mode}.json"
            reports[mode] = json.loads(path.read_text()) if path.exists() else None
            logs[mode] = (workdir / f"{mode}.log").read_text(errors="replace")

    print(f"wall time: {wall:.1f} s (exit codes: stock {codes['stock']}, blueprint {codes['blueprint']})")
    every_probe = modules == MODULES
    broken = [reason for mode in MODES if (reason := broken_run(mode, reports[mode], logs[mode], every_probe))]
    if broken:
        print("\n\n".join(broken))
        return 2
    stock, blueprint = reports["stock"], reports["blueprint"]
    assert stock is not None and blueprint is not None
    print(summary("stock", stock, logs["stock"]))
    print(summary("blueprint", blueprint, logs["blueprint"]))
    print("substituted:", ", ".join(blueprint["replaced"]))
    print("calls into the blueprint:", ", ".join(f"{k} {v}" for k, v in sorted(blueprint["blueprint_calls"].items())))

    stock_failing, blueprint_failing = failing(stock), failing(blueprint)
    if stock_failing:
        print(f"\nFailing in the stock run too ({len(stock_failing)}), not counted against the blueprint:")
        print("\n".join(f"  {test}" for test in sorted(stock_failing)))
    fixed = sorted(set(stock_failing) - set(blueprint_failing))
    if fixed:
        print(f"\nFailing only in the stock run ({len(fixed)}):")
        print("\n".join(f"  {test}" for test in fixed))
    only_blueprint = sorted(set(blueprint_failing) - set(stock_failing))
    if not only_blueprint:
        print("\nOK: no test fails only with the blueprint's classes")
        return 0
    print(f"\nFAILED: {len(only_blueprint)} failing only with the blueprint's classes:")
    print("\n".join(f"  {test}" for test in only_blueprint))
    for test in only_blueprint:
        print(f"\n{'=' * 70}\n{test}\n{'-' * 70}\n{blueprint_failing[test]}")
    return 1


if __name__ == "__main__":
    # Test modules as arguments run those instead, e.g. `main.py asgi csrf_tests`.
    sys.exit(main(sys.argv[1:] or MODULES))
