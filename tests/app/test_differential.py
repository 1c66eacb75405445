"""The blueprint's handler against Django's own, pattern by pattern: any observable difference fails.

Each row of differential_rows runs through both handlers, built from the same settings and driven as a
server drives them, against the real database. What is compared: docs/async-safety.md, "How it is shown
to behave like Django"; the one intended difference (a connection stock Django loses), "Threads".
"""

import difflib

import pytest
from differential_harness import Row, run_row
from differential_rows import ROWS
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler

from core.handlers import ASGIHandler

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # Django's own warning when a sync iterator is streamed under ASGI: recorded and compared, not shown.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def event_names(outcome: dict) -> set[str]:
    return {event[0] for events in outcome["events"].values() for event in events}


ABSENT = "<absent>"


def differences(stock: object, blueprint: object, where: str = "") -> list[str]:
    """Where the two outcomes differ, each place once, lists of events as a line diff."""
    if isinstance(stock, dict) and isinstance(blueprint, dict):
        found = []
        for key in sorted(stock.keys() | blueprint.keys(), key=str):
            found += differences(stock.get(key, ABSENT), blueprint.get(key, ABSENT), f"{where}/{key}")
        return found
    if stock == blueprint:
        return []
    if isinstance(stock, list) and isinstance(blueprint, list):
        lines = difflib.ndiff([repr(x) for x in stock], [repr(x) for x in blueprint])
        return [f"{where} (- stock, + blueprint):\n" + "\n".join(f"    {line}" for line in lines)]
    return [f"{where}:\n    stock:     {stock!r}\n    blueprint: {blueprint!r}"]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_the_blueprint_does_what_stock_django_does(row: Row):
    stock = run_row(row, DjangoASGIHandler)
    blueprint = run_row(row, ASGIHandler)

    missing = set(row.must_see) - event_names(stock)
    assert not missing, f"stock Django's run never did {sorted(missing)}: the row does not test its pattern"

    stock_kept = stock.pop("connections_not_returned")
    blueprint_kept = blueprint.pop("connections_not_returned")
    found = differences(stock, blueprint)
    assert not found, "the blueprint differs from stock Django:\n" + "\n".join(found)
    kept = f"pooled connections not returned: blueprint {blueprint_kept}, stock Django {stock_kept}"
    # The one intended difference: stock Django leaves a pooled connection behind where the blueprint returns it,
    # for a client that leaves so that the server's send() raises (row client_leaves_before_the_answer) and a
    # request_finished receiver of the user's that queries (request_finished_receiver_using_the_database).
    assert blueprint_kept == 0, kept
    assert stock_kept == row.stock_leaks, kept
