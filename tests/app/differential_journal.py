"""What the user code of a differential row did: each event, the request it belongs to and the thread it ran in.

The driver sets REQUEST in the task it starts for each request; the views,
middleware and receivers record events with note(). Probes let the driver
and the user code wait for each other (a client that leaves once a view has
started, a background task that starts once its request is over).
"""

import asyncio
import contextvars
import threading
from collections import defaultdict

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("differential_request", default="(no request)")

_lock = threading.Lock()
_events: list[tuple[str, str, tuple, threading.Thread]] = []
_probes: dict[str, asyncio.Event] = {}
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_background: set[asyncio.Task] = set()


def begin() -> None:
    """Start a run, on its event loop: no events, no probes."""
    global _loop, _loop_thread
    _loop = asyncio.get_running_loop()
    _loop_thread = threading.current_thread()
    _probes.clear()
    _background.clear()
    with _lock:
        _events.clear()


def note(event: str, *details: object, request: str = "") -> None:
    """Record that user code did `event`, in this thread, for this request (or `request`)."""
    with _lock:
        # The thread object itself, kept alive here: a dead thread's ident can be reused.
        _events.append((request or REQUEST.get(), event, details, threading.current_thread()))


def keep(task: asyncio.Task) -> None:
    """Hold a background task, as its author must, so it is not collected while it runs."""
    _background.add(task)
    task.add_done_callback(_background.discard)


def _probe(name: str) -> asyncio.Event:
    return _probes.setdefault(name, asyncio.Event())


def fire(name: str) -> None:
    """Set probe `name`, from the event loop or from any thread."""
    assert _loop is not None
    if threading.current_thread() is _loop_thread:
        _probe(name).set()
    else:
        _loop.call_soon_threadsafe(lambda: _probe(name).set())


async def wait(name: str, timeout: float = 5.0) -> None:
    await asyncio.wait_for(_probe(name).wait(), timeout)


def by_request() -> tuple[dict[str, list], list[tuple[str, str]]]:
    """The events per request with threads as relations, and which requests shared a thread.

    A thread is "loop" (the event loop's), "default executor" (a worker of
    the loop's pool, where Django runs thread_sensitive=False work such as
    got_request_exception: which worker is the pool's choice), or t1, t2, ...
    in the order the request first used it. What is compared is which of a
    request's code ran together, never thread ids.
    """
    with _lock:
        events = list(_events)
    per_request: dict[str, list] = defaultdict(list)
    labels: dict[str, dict[threading.Thread, str]] = defaultdict(dict)
    threads_of: dict[str, set[threading.Thread]] = defaultdict(set)
    for request, event, details, thread in events:
        if thread is _loop_thread:
            where = "loop"
        elif thread.name.startswith("asyncio_"):  # the name asyncio gives its default executor's threads
            where = "default executor"
        else:
            where = labels[request].setdefault(thread, f"t{len(labels[request]) + 1}")
            threads_of[request].add(thread)
        per_request[request].append((event, *details, where))
    names = sorted(threads_of)
    shared = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if threads_of[a] & threads_of[b]]
    return dict(per_request), shared
