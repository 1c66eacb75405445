"""A small, bounded load for the fault tests: a few threads sending requests to nginx on 127.0.0.1.

Each thread sends one request at a time on a new connection and notes what
came back and when. The load ends by itself after `max_requests` requests or
`max_seconds`, whichever comes first, or when stop() is called. It only ever
connects to 127.0.0.1 on the port it is given.
"""

from __future__ import annotations

import http.client
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    request: Request
    started: float  # time.monotonic()
    elapsed: float
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    body: bytes = b""
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.elapsed

    def describe(self) -> str:
        what = self.status if self.status is not None else self.error
        return f"{self.request.method} {self.request.path} -> {what} in {self.elapsed:.2f} s"


def get(path: str) -> Callable[[], Request]:
    return lambda: Request("GET", path)


def post_book(token: str, prefix: str = "load") -> Callable[[], Request]:
    """A new, unique title each time, so every book answered with 201 can be looked for later."""

    def make() -> Request:
        body = json.dumps({"title": f"{prefix}-{secrets.token_hex(6)}"}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        return Request("POST", "/books/", body, headers)

    return make


class Load:
    """Send a mix of requests from `threads` threads until stopped or a bound is reached."""

    def __init__(
        self,
        port: int,
        mix: list[Callable[[], Request]],
        *,
        threads: int = 4,
        pause: float = 0.05,
        timeout: float = 15,
        max_requests: int = 5_000,
        max_seconds: float = 120,
    ) -> None:
        self.port = port
        self.threads = threads
        self.pause = pause
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.results: list[Result] = []
        self._mix: Iterator[Callable[[], Request]] = itertools.cycle(mix)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._sent = 0

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> list[Result]:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return self.results

    def finish(self) -> list[Result]:
        """Wait until max_requests or max_seconds is reached; the results."""
        for worker in self._workers:
            worker.join(self.max_seconds + self.timeout + 5)
        return self.results

    def _next(self) -> Request | None:
        with self._lock:
            if self._sent >= self.max_requests or time.monotonic() >= self._deadline:
                return None
            self._sent += 1
            return next(self._mix)()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = self._next()
            if request is None:
                return
            result = send(self.port, request, self.timeout)
            with self._lock:
                self.results.append(result)
            self._stop.wait(self.pause)

    # --- Reading the results ------------------------------------------------------------
    def between(self, start: float, end: float) -> list[Result]:
        """Requests sent at or after `start` and sent before `end`."""
        with self._lock:
            return [r for r in self.results if start <= r.started < end]

    def in_flight_at(self, moment: float) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.started <= moment < r.ended]


def send(port: int, request: Request, timeout: float = 15) -> Result:
    """One request on a new connection to nginx on 127.0.0.1:port."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Host": f"localhost:{port}", **request.headers}
        conn.request(request.method, request.path, body=request.body, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return Result(request, started, time.monotonic() - started, response.status, body)
    except (OSError, http.client.HTTPException) as exc:
        return Result(request, started, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def created_ids(results: list[Result]) -> set[int]:
    """The ids of the books the app answered 201 for."""
    return {json.loads(r.body)["id"] for r in results if r.status == 201}
