"""pytest plugin: uvicorn's and uvicorn-worker's own tests, run also against protocol.py and workers.py.

Loaded by run_suites.py (`-p suite_plugin`) in the `uvicorn-suite` image. It parametrizes
every test that takes `http_protocol_cls` or `worker_class` over uvicorn's classes and the
project's, runs the tests that name HttpToolsProtocol in their body once more with the
project's class in its place, gives the mock event loops of uvicorn's tests the call_soon()
the project's transport schedules its flush with, fails a test when an exception from the
project's code was only logged, and writes each test's subject and outcome to
--suite-report for run_suites.py to compare.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import protocol
import pytest
from protocol import HttpToolsOneWriteProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What each subject is compared as: the project's class against uvicorn's reference.
REFERENCE, PROJECT, OTHER = "reference", "project", "other"

# Subject id (as it appears in the test ids) -> (the value the test gets, its role).
HTTP_PROTOCOLS: dict[str, tuple[Any, str]] = {
    "HttpToolsProtocol": (HttpToolsProtocol, REFERENCE),
    "H11Protocol": (H11Protocol, OTHER),
    "HttpToolsOneWriteProtocol": (HttpToolsOneWriteProtocol, PROJECT),
}
# uvicorn-worker's tests take the worker as the "module.Class" gunicorn is given.
WORKERS: dict[str, tuple[Any, str]] = {
    "UvicornWorker": ("uvicorn_worker.UvicornWorker", REFERENCE),
    "UvicornH11Worker": ("uvicorn_worker.UvicornH11Worker", OTHER),
    "project-UvicornWorker": ("workers.UvicornWorker", PROJECT),
}
# The project's worker turns lifespan off (Django has none), so the tests of an app whose
# lifespan startup fails get it with lifespan on: the same _serve(), the same exit.
LIFESPAN_FIXTURES = {"gunicorn_process_with_lifespan_startup_failure"}
LIFESPAN_WORKERS: dict[str, tuple[Any, str]] = {
    "UvicornWorker": WORKERS["UvicornWorker"],
    "UvicornH11Worker": WORKERS["UvicornH11Worker"],
    "project-UvicornWorker-lifespan-on": ("suite_workers.LifespanOnUvicornWorker", PROJECT),
}
SUBJECT_ARGS = ("http_protocol_cls", "worker_class")

# Tests that name this class in their body also run with the project's class in its place.
SUBSTITUTED_NAME = "HttpToolsProtocol"
SUBSTITUTE = "HttpToolsOneWriteProtocol"

# protocol.py and workers.py: an exception that passes through them fails the test, even
# when uvicorn only logs it (as it does for errors in the app) and the test asserts nothing.
PROJECT_DIR = Path(protocol.__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--suite-report", default=None, help="write each test's subject and outcome here (JSON lines)")


def pytest_configure(config: pytest.Config) -> None:
    # uvicorn's benchmarks carry pytest-codspeed's marker; without it they are plain tests.
    config.addinivalue_line("markers", "benchmark: a pytest-codspeed benchmark, run here as a plain test")
    config.pluginmanager.register(Recorder(config), "suite-recorder")


def subjects_for(argname: str, fixturenames: list[str]) -> dict[str, tuple[Any, str]]:
    if argname == "http_protocol_cls":
        return HTTP_PROTOCOLS
    return LIFESPAN_WORKERS if LIFESPAN_FIXTURES & set(fixturenames) else WORKERS


def _directly_parametrized(metafunc: pytest.Metafunc, argname: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if argname in names:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A parametrize mark on the test takes precedence over the upstream fixture's own
    # params (pytest's rule for direct parametrization): the subjects are exactly these.
    for argname in SUBJECT_ARGS:
        if argname not in metafunc.fixturenames or _directly_parametrized(metafunc, argname):
            continue
        subjects = subjects_for(argname, metafunc.fixturenames)
        values = [value for value, _role in subjects.values()]
        metafunc.definition.add_marker(pytest.mark.parametrize(argname, values, ids=list(subjects)))


def _names_in(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names


def with_project_protocol(function: Callable[..., Any]) -> Callable[..., Any]:
    """The same test function, whose global HttpToolsProtocol is the project's class."""
    namespace = {**function.__globals__, SUBSTITUTED_NAME: HttpToolsOneWriteProtocol}
    clone = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__dict__.update(function.__dict__)  # its marks: skipif, and anyio's usefixtures
    clone.__qualname__ = function.__qualname__
    return clone


def _label(value: object) -> str:
    return value.__qualname__ if isinstance(value, type) else str(value)


class _MockHandle:
    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


def _run_ready(loop: object) -> None:
    # Until none is left: what an event loop does in its next turns when no I/O is ready.
    ready: list[_MockHandle] = loop.__dict__.setdefault("_suite_ready", [])
    while ready:
        handle = ready.pop(0)
        if not handle.cancelled:
            handle.callback(*handle.args)


def give_call_soon(cls: type) -> None:
    """Give a MockLoop call_soon(), whose callbacks run when the turn that scheduled them ends.

    The mock runs a task inline and whole in run_one(), and due timers in run_later(): those
    are its turns. asyncio runs call_soon's callbacks after the step that scheduled them,
    so here they run at the end of run_one() and run_later().
    """
    run_one, run_later = cls.run_one, getattr(cls, "run_later", None)

    def call_soon(self: object, callback: Callable[..., object], *args: Any, context: object = None) -> _MockHandle:
        handle = _MockHandle(callback, args)
        self.__dict__.setdefault("_suite_ready", []).append(handle)
        return handle

    async def run_one_then_ready(self: object) -> Any:
        try:
            return await run_one(self)
        finally:
            _run_ready(self)

    def run_later_then_ready(self: object, with_delay: float) -> None:
        try:
            run_later(self, with_delay)
        finally:
            _run_ready(self)

    cls.call_soon = call_soon
    cls.run_one = run_one_then_ready
    if run_later is not None:
        cls.run_later = run_later_then_ready


class ProjectErrors(logging.Handler):
    """Collects logged errors whose traceback runs through the project's code."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        tb = record.exc_info[2] if record.exc_info else None
        if tb is not None and any(Path(f.f_code.co_filename).parent == PROJECT_DIR for f, _ in traceback.walk_tb(tb)):
            self.found.append(f"{record.name}: {record.getMessage()}\n" + "".join(traceback.format_tb(tb)))


class Recorder:
    """Which subject each test runs with and how it ends, written to --suite-report as it goes.

    One JSON object a line: the subjects once collected, then each test as it starts and
    ends, then the exit status; a session that hangs or crashes still leaves what it ran.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.subjects: dict[str, dict[str, str]] = {}  # nodeid -> key, subject, role
        self.outcomes: dict[str, str] = {}
        self.substituted: list[str] = []
        self.not_substituted: list[str] = []
        path = config.getoption("--suite-report")
        self.path = Path(path) if path else None

    def _emit(self, **entry: object) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")

    def _record(self, nodeid: str, key: str, subject: str, role: str) -> None:
        self.subjects[nodeid] = {"key": key, "subject": subject, "role": role}

    @pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the clones are tests like any other
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        clones: list[pytest.Item] = []
        for item in items:
            if not isinstance(item, pytest.Function):
                continue
            callspec = getattr(item, "callspec", None)
            params = callspec.params if callspec is not None else {}
            argname = next((name for name in SUBJECT_ARGS if name in params), None)
            if argname is not None:
                subjects = subjects_for(argname, item.fixturenames)
                subject = next((s for s, (value, _) in subjects.items() if value == params[argname]), None)
                role = subjects[subject][1] if subject else OTHER
                others = sorted(f"{name}={_label(value)}" for name, value in params.items() if name != argname)
                key = f"{item.nodeid.split('[', 1)[0]}[{','.join(others)}]"
                self._record(item.nodeid, key, subject or _label(params[argname]), role)
            elif SUBSTITUTED_NAME in _names_in(item.function.__code__):
                if params:
                    self.not_substituted.append(item.nodeid)
                    continue
                # pytest builds a test's id from originalname (and a callspec it has not).
                name = f"{item.name}[{SUBSTITUTE}]"
                clone = pytest.Function.from_parent(
                    item.parent, name=name, callobj=with_project_protocol(item.function), originalname=name
                )
                self._record(item.nodeid, item.nodeid, SUBSTITUTED_NAME, REFERENCE)
                self._record(clone.nodeid, item.nodeid, SUBSTITUTE, PROJECT)
                self.substituted.append(item.nodeid)
                clones.append(clone)
        items.extend(clones)

    def pytest_collection_finish(self) -> None:
        patched_loops = []
        for name, module in list(sys.modules.items()):
            cls = getattr(module, "MockLoop", None)
            if not name.startswith("tests.") or not isinstance(cls, type) or cls.__module__ != name:
                continue
            if not hasattr(cls, "call_soon") and hasattr(cls, "run_one"):
                give_call_soon(cls)
                patched_loops.append(f"{name}.MockLoop")
        self._emit(
            subjects=self.subjects,
            substituted=self.substituted,
            not_substituted=self.not_substituted,
            patched_loops=patched_loops,
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        handler = ProjectErrors()
        root = logging.getLogger()  # uvicorn's tests make uvicorn's loggers propagate
        root.addHandler(handler)
        try:
            result = yield
        finally:
            root.removeHandler(handler)
        if handler.found:
            raise AssertionError("logged, not raised, from the project's code:\n" + "\n".join(handler.found))
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif self.outcomes.get(report.nodeid) == "failed":
            return
        elif report.skipped:
            self.outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._emit(started=nodeid)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._emit(finished=nodeid, outcome=self.outcomes.get(nodeid, "failed"))

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        self._emit(exitstatus=int(exitstatus))
