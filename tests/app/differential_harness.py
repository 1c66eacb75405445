"""One differential row run through one handler, as a server runs it: its own event loop, no sync caller above.

run_row() returns everything observable of the run (differential_outcome):
the answers, the user code's events with their threads as relations, which
request signals fired with which sender, log lines, warnings, the rows in the
database, and how many pooled connections were not given back.
"""

import asyncio
import contextlib
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import differential_journal as journal
from differential_driver import Client, Exchange
from differential_outcome import LogRecords, Normaliser, clear_database, connections_in_use
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import connections
from django.dispatch import Signal
from django.test import override_settings

# (signal, receiver, sender): connected for the row's run only. sender None: any.
Receiver = tuple[Signal, Callable, object]


@dataclass
class Run:
    """What a scenario drives: the handler, and clients whose requests are recorded by label."""

    app: object
    fixture_cookies: dict[str, str]
    exchanges: dict[str, Exchange] = field(default_factory=dict)

    def client(self, logged_in: bool = False) -> Client:
        return Client(self.app, self.exchanges, self.fixture_cookies if logged_in else None)


@dataclass(frozen=True)
class Row:
    id: str
    scenario: Callable[[Run], Awaitable[None]]
    middleware: tuple[str, ...] = ()  # appended to settings.MIDDLEWARE
    receivers: tuple[Receiver, ...] = ()
    settings: dict = field(default_factory=dict)
    setup: Callable[[], dict[str, str]] | None = None  # database fixtures; returns cookies for logged-in clients
    must_see: tuple[str, ...] = ()  # events stock Django's run must show: the row did exercise its pattern
    stock_leaks: int = 0  # pooled connections stock Django is known not to return (see the rows that set it)


_handler_class: type | None = None  # the class of the handler being run, for observe()


def _sender(sender: object) -> str:
    # The handler sends its own class, which differs by construction (Django's, or the blueprint's
    # subclass, which might as well send Django's); which requests send it is what is compared.
    # Row receiver_for_djangos_asgi_handler_only shows what the difference means to a receiver.
    if sender is _handler_class or sender is DjangoASGIHandler:
        return "<the handler's class>"
    return repr(sender)


def _observer(name: str) -> Callable:
    async def observe(sender: object, **kwargs: object) -> None:
        journal.note(f"signal:{name}", _sender(sender))

    return observe


OBSERVERS: tuple[Receiver, ...] = tuple(
    (signal, _observer(name), None)
    for name, signal in [
        ("request_started", request_started),
        ("request_finished", request_finished),
        ("got_request_exception", got_request_exception),
    ]
)


@contextlib.contextmanager
def connected(receivers: tuple[Receiver, ...]) -> Iterator[None]:
    for signal, receiver, sender in receivers:
        signal.connect(receiver, sender=sender, weak=False)
    try:
        yield
    finally:
        for signal, receiver, sender in receivers:
            signal.disconnect(receiver, sender=sender)


async def _drive(run: Run, scenario: Callable[[Run], Awaitable[None]]) -> None:
    journal.begin()
    await scenario(run)


def run_row(row: Row, make_handler: Callable[[], object]) -> dict:
    global _handler_class
    middleware = [*settings.MIDDLEWARE, *row.middleware]
    with override_settings(ROOT_URLCONF="differential_urls", MIDDLEWARE=middleware, **row.settings):
        fixtures = row.setup() if row.setup else {}
        connections.close_all()  # the test thread's connection back in the pool: only requests hold any
        assert connections_in_use(settle_seconds=2) == 0, "the pool was not whole before the run"
        app = make_handler()  # builds the middleware chain from the settings above
        _handler_class = type(app)
        run = Run(app, fixtures)
        with connected(OBSERVERS + row.receivers), LogRecords() as logs, warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            asyncio.run(_drive(run, row.scenario))
        events, shared = journal.by_request()
        in_use = connections_in_use(settle_seconds=2)
        if in_use:
            connections["default"].close_pool()  # a whole pool for what runs next; the count is kept
        normaliser = Normaliser(fixtures)
        outcome = {
            "responses": {label: normaliser.response(label, ex) for label, ex in run.exchanges.items()},
            "events": events,
            "requests_sharing_a_thread": shared,
            "logs": logs.lines,
            "warnings": sorted({(w.category.__name__, str(w.message)) for w in seen}),
            "database": normaliser.database(),
            "connections_not_returned": in_use,
        }
        clear_database()
        connections.close_all()
    return outcome
