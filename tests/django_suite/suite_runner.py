"""Django's DiscoverRunner, which puts the blueprint's classes in place of Django's and records the outcome.

With DJANGO_SUITE_MODE=blueprint, importing this module (runtests.py does, via
TEST_RUNNER, before any test module is imported) makes core.handlers.ASGIHandler
Django's ASGIHandler, each drop-in of core.dropins.NO_HOP_SUBSTITUTES the
class of its Django path, and has Django's AsyncClient build its middleware chain
as the blueprint's handler does. Every run writes its result to DJANGO_SUITE_REPORT (JSON).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from types import CodeType, ModuleType
from unittest import TestResult

from django.test.client import AsyncClientHandler
from django.test.runner import DiscoverRunner

MODE = os.environ.get("DJANGO_SUITE_MODE", "stock")
REPORT = os.environ.get("DJANGO_SUITE_REPORT", "")
# The module that defines Django's handler, and those that import it by name.
HANDLER_MODULES = ("django.core.handlers.asgi", "django.core.asgi")
ASYNC_CLIENT_CHAIN = "django.test.client.AsyncClientHandler.load_middleware"


def _split(path: str) -> tuple[ModuleType, str]:
    module_name, name = path.rsplit(".", 1)
    return importlib.import_module(module_name), name


def substitute() -> list[str]:
    """Put the blueprint's classes where Django's are; return what was replaced."""
    from django.core.handlers import asgi

    import core.dropins
    import core.handlers

    replaced = []
    stock_handler = asgi.ASGIHandler
    for name in HANDLER_MODULES:
        importlib.import_module(name)
    # Any Django module already loaded that bound the name, not only the known ones.
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "django" and getattr(module, "ASGIHandler", None) is stock_handler:
            module.ASGIHandler = core.handlers.ASGIHandler
            replaced.append(f"{name}.ASGIHandler")
    for path, drop_in in core.dropins.NO_HOP_SUBSTITUTES.items():
        module, name = _split(path)
        if not issubclass(drop_in, getattr(module, name)):
            raise TypeError(f"{drop_in!r} is not a subclass of {path}")
        setattr(module, name, drop_in)
        replaced.append(path)
    # Django's AsyncClient builds its async middleware chain as the blueprint's handler does.
    AsyncClientHandler.load_middleware = core.handlers.ASGIHandler.load_middleware
    replaced.append(ASYNC_CLIENT_CHAIN)
    return replaced


def substitution_problems() -> list[str]:
    """What is not the blueprint's class where it should be (empty when the substitution holds)."""
    import core.dropins
    import core.handlers

    expected = {f"{name}.ASGIHandler": core.handlers.ASGIHandler for name in HANDLER_MODULES}
    expected.update(core.dropins.NO_HOP_SUBSTITUTES)
    problems = []
    if AsyncClientHandler.load_middleware is not core.handlers.ASGIHandler.load_middleware:
        problems.append(f"{ASYNC_CLIENT_CHAIN} is not core.handlers.ASGIHandler.load_middleware")
    for path, cls in expected.items():
        module, name = _split(path)
        if getattr(module, name, None) is not cls:
            problems.append(f"{path} is {getattr(module, name, None)!r}, not {cls!r}")
    return problems


class CallProbe:
    """Counts calls of a few functions through sys.monitoring, without touching the functions."""

    def __init__(self, functions: dict[str, CodeType]) -> None:
        self.names = {code: name for name, code in functions.items()}
        self.counts: Counter[str] = Counter()
        monitoring = sys.monitoring
        self.tool = monitoring.PROFILER_ID
        monitoring.use_tool_id(self.tool, "django-suite call probe")
        monitoring.register_callback(self.tool, monitoring.events.PY_START, self._started)
        for code in self.names:
            monitoring.set_local_events(self.tool, code, monitoring.events.PY_START)

    def _started(self, code: CodeType, offset: int) -> None:
        self.counts[self.names[code]] += 1

    def calls(self) -> dict[str, int]:
        return {name: self.counts[name] for name in self.names.values()}


def blueprint_probe() -> CallProbe:
    import core.dropins
    import core.handlers

    functions = [
        core.handlers.ASGIHandler.__call__,
        core.handlers.ASGIHandler.load_middleware,
        core.handlers.ASGIHandler.close_response,
        core.dropins.NoHopMixin.__acall__,
        core.dropins.CsrfViewMiddleware.aprocess_view,
    ]
    return CallProbe({f"{f.__module__}.{f.__qualname__}": f.__code__ for f in functions})


REPLACED = substitute() if MODE == "blueprint" else []
PROBE = blueprint_probe() if MODE == "blueprint" else None


def _by_id(entries: list[tuple[object, str]]) -> dict[str, str]:
    """Test id -> traceback(s); subtests and class-level errors have ids of their own."""
    found: dict[str, str] = {}
    for test, text in entries:
        key = test.id()  # type: ignore[attr-defined]
        found[key] = f"{found[key]}\n{text}" if key in found else text
    return found


def write_report(result: TestResult, problems: list[str]) -> None:
    report = {
        "mode": MODE,
        "tests_run": result.testsRun,
        "failures": _by_id(result.failures),
        "errors": _by_id(result.errors),
        "unexpected_successes": [test.id() for test in result.unexpectedSuccesses],
        "skipped": len(result.skipped),
        "expected_failures": len(result.expectedFailures),
        "replaced": REPLACED,
        "substitution_problems": problems,
        "blueprint_calls": PROBE.calls() if PROBE else {},
    }
    if REPORT:
        Path(REPORT).write_text(json.dumps(report, indent=1))


class SuiteRunner(DiscoverRunner):
    """DiscoverRunner, checking the substitution before and after the tests and reporting what failed."""

    def run_suite(self, suite: object, **kwargs: object) -> TestResult:
        problems = substitution_problems() if MODE == "blueprint" else []
        result = super().run_suite(suite, **kwargs)
        if MODE == "blueprint":
            problems += [f"after the run: {p}" for p in substitution_problems()]
        self.problems = problems
        write_report(result, problems)
        return result

    def suite_result(self, suite: object, result: TestResult, **kwargs: object) -> int:
        return super().suite_result(suite, result, **kwargs) + len(self.problems)
