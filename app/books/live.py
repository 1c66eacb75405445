"""New books, live, to every open stream: one LISTEN connection per worker, fanned out in memory.

Each worker's Hub LISTENs for the trigger's NOTIFY (migration 0002), fetches each book once, keeps the
last LIVE_BUFFER for resuming and hands them to the streams and long-polls of books.views.
The design and its limits: docs/live-updates.md, "How a book gets to every stream".
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import psycopg
from django.conf import settings
from django.db import connections
from psycopg import sql

from books.models import Book, summary_status
from core import draining

logger = logging.getLogger(__name__)

CHANNEL = "books_book_created"  # the trigger's, migration 0002
CHANGED = "books_book_changed"  # its summary was written (books/tasks.py): migration 0003
# How the listening connections show in pg_stat_activity.
APPLICATION_NAME = "books.live"
COLUMNS = ("id", "title", "created_at", "summary", "summary_error")
PAGE = 500  # books per query when catching up
_SELECT = sql.SQL("SELECT {columns} FROM {table} ").format(
    columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), table=sql.Identifier(Book._meta.db_table)
)
SELECT_IDS = _SELECT + sql.SQL("WHERE id = ANY(%s) ORDER BY id")
SELECT_LATEST = _SELECT + sql.SQL("ORDER BY id DESC LIMIT %s")
SELECT_AFTER = _SELECT + sql.SQL("WHERE id > %s ORDER BY id LIMIT %s")


@dataclass(frozen=True)
class BookEvent:
    id: int
    title: str
    created_at: str  # ISO 8601, UTC, as the API answers it
    summary: str = ""  # written by the background task (books/tasks.py)
    summary_error: str = ""

    @classmethod
    def from_row(cls, row: tuple) -> BookEvent:
        book_id, title, created_at, summary, summary_error = row
        return cls(book_id, title, created_at.astimezone(datetime.UTC).isoformat(), summary, summary_error)

    @property
    def summary_status(self) -> str:
        return summary_status(self.summary, self.summary_error)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at,
            "summary_status": self.summary_status,
            "summary": self.summary,
            "summary_error": self.summary_error,
        }

    @cached_property
    def sse(self) -> bytes:
        """The book as one Server-Sent Event: built and encoded once, sent to every subscriber."""
        return f"id: {self.id}\nevent: book\ndata: {json.dumps(self.as_dict())}\n\n".encode()


@dataclass(frozen=True)
class BookChange:
    """A book announced before whose summary has been written: sent without an id, it moves no stream's resume point."""

    book: BookEvent

    @cached_property
    def sse(self) -> bytes:
        return f"event: book-update\ndata: {json.dumps(self.book.as_dict())}\n\n".encode()


class Signal:
    """What a subscriber is offered besides books."""

    OVERFLOW = "overflow"  # it fell behind: its stream ends with a retry hint
    DRAIN = "drain"  # the server is shutting down
    ENDING = (OVERFLOW, DRAIN)
    KEEPALIVE = "keepalive"  # time for a stream's comment line (the Hub's clock, every LIVE_KEEPALIVE s)
    STATS = "stats"  # time for the worker's numbers, to a stream that asked for them


class Subscriber:
    """A stream's or a long-poll's inbox: books and signals, bounded.

    Not an asyncio.Queue: the waiting task takes everything offered at once,
    and no per-wait timer is armed (the Hub's clock offers KEEPALIVE), which
    is most of what an event costs a worker with thousands of streams.
    """

    def __init__(self, size: int, clock: Iterable[str] = ()) -> None:
        self.size = size  # books it may hold
        self.clock = frozenset(clock)  # the Hub's clock signals it is offered: KEEPALIVE, STATS
        self.items: deque[BookEvent | BookChange | str] = deque()
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: BookEvent | BookChange | str) -> None:
        if self.ended:
            return
        if not isinstance(item, str):
            if len(self.items) >= self.size:
                self._end(Signal.OVERFLOW)
                return
        elif item in Signal.ENDING:  # a signal that ends the subscription: it must get through
            self._end(item)
            return
        elif item in self.items:  # a clock signal not yet taken: once is enough
            return
        self.items.append(item)
        self._wake()

    def _end(self, signal: str) -> None:
        self.ended = True
        self.items.clear()
        self.items.append(signal)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[BookEvent | BookChange | str]:
        """Everything offered so far, in order; waits for the first."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = list(self.items)
        self.items.clear()
        return items


class Hub:
    """This worker's LISTEN connection, its recent books and its subscribers."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.recent: OrderedDict[int, BookEvent] = OrderedDict()
        # Every book with an id above `floor` is in `recent` (None: not known,
        # while the listener is not connected).
        self.floor: int | None = None
        self.last_id = 0
        self.task: asyncio.Task[None] | None = None
        self.clock_tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- Subscribers -------------------------------------------------------------------
    def subscribe(self, clock: Iterable[str] = ()) -> Subscriber:
        """A new inbox, offered every book from now on and the clock signals named."""
        self._start()
        subscriber = Subscriber(settings.LIVE_QUEUE_SIZE, clock)
        if draining.is_draining():
            subscriber.offer(Signal.DRAIN)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _wait_ready(self) -> None:
        self._start()
        if not self.ready.is_set():
            try:  # the listener's first connection, usually a few milliseconds away
                async with asyncio.timeout(settings.DATABASES["default"]["OPTIONS"]["connect_timeout"]):
                    await self.ready.wait()
            except TimeoutError:
                pass

    async def latest(self, count: int) -> list[BookEvent]:
        """The newest `count` books, newest first: from memory when it has them, else from the database."""
        await self._wait_ready()
        if self.ready.is_set() and self.floor is not None and (self.floor == 0 or len(self.recent) >= count):
            return heapq.nlargest(count, self.recent.values(), key=lambda book: book.id)
        rows = Book.objects.order_by("-id").values_list(*COLUMNS)[:count]
        return [BookEvent.from_row(row) async for row in rows]

    async def backlog(self, after: int) -> list[BookEvent]:
        """The books with an id above `after`, in order: from memory when it has them all, else from the database."""
        await self._wait_ready()
        if self.ready.is_set() and self.floor is not None and after >= self.floor:
            return [book for book_id, book in self.recent.items() if book_id > after]
        found: list[BookEvent] = []
        while True:
            rows = Book.objects.filter(id__gt=after).order_by("id").values_list(*COLUMNS)[:PAGE]
            page = [BookEvent.from_row(row) async for row in rows]
            found += page
            if len(page) < PAGE:
                return found
            after = page[-1].id

    # --- The listener -------------------------------------------------------------------
    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and not self.task.done() and self.loop is loop:
            return
        if self.loop is not loop:  # a worker has one loop for life; tests run a loop per request
            self.recent.clear()
            self.floor, self.last_id = None, 0
        self.loop, self.ready = loop, asyncio.Event()
        self.task = loop.create_task(self._listen(), name="books.live listener")
        keepalive = self._clock(Signal.KEEPALIVE, lambda: settings.LIVE_KEEPALIVE)
        stats = self._clock(Signal.STATS, lambda: settings.LIVE_STATS_INTERVAL)
        self.clock_tasks = [
            loop.create_task(keepalive, name="books.live keepalive"),
            loop.create_task(stats, name="books.live stats"),
        ]

    async def _clock(self, signal: str, seconds: Callable[[], float]) -> None:
        """Offers `signal` every seconds() (a setting, read each tick) to whoever wants it; DRAIN to all at the end."""
        while not await draining.sleep(seconds()):
            for subscriber in list(self.subscribers):
                if signal in subscriber.clock:
                    subscriber.offer(signal)
        for subscriber in list(self.subscribers):
            subscriber.offer(Signal.DRAIN)

    async def _listen(self) -> None:
        pause = 0.5
        while True:
            try:
                params = connections["default"].get_connection_params()
                params.pop("cursor_factory", None)  # Django's sync cursor class
                params["application_name"] = APPLICATION_NAME
                async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}; LISTEN {CHANGED}")
                    await self._catch_up(connection)
                    self.ready.set()
                    if pause > 0.5:
                        logger.info("live: listening again; books up to id %d announced", self.last_id)
                    pause = 0.5
                    await self._relay(connection)
            except Exception as error:  # the database gone, or a bug: either way the listener goes on
                self.ready.clear()
                self.floor = None
                if isinstance(error, (psycopg.Error, OSError)):
                    logger.warning("live: lost the database (%s); listening again in %.1f s", error, pause)
                else:
                    logger.exception("live: the listener failed; listening again in %.1f s", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _relay(self, connection: psycopg.AsyncConnection) -> None:
        while True:
            notes = [(n.channel, int(n.payload)) async for n in connection.notifies(timeout=30, stop_after=1)]
            if not notes:  # 30 s of quiet: make sure the connection still answers
                await connection.execute("SELECT 1")
                continue
            rows = await connection.execute(SELECT_IDS, [list({book_id for _, book_id in notes})])
            books = {row[0]: BookEvent.from_row(row) for row in await rows.fetchall()}
            self._publish(books[book_id] for channel, book_id in notes if channel == CHANNEL and book_id in books)
            changed = {book_id for channel, book_id in notes if channel == CHANGED}
            self._publish_changes(books[book_id] for book_id in sorted(changed) if book_id in books)

    async def _catch_up(self, connection: psycopg.AsyncConnection) -> None:
        """After (re)connecting: the recent books, or every book committed since the last one announced."""
        if self.last_id == 0:
            cursor = await connection.execute(SELECT_LATEST, [settings.LIVE_BUFFER])
            self._remember(BookEvent.from_row(row) for row in reversed(await cursor.fetchall()))
        else:
            pending = [book.id for book in self.recent.values() if book.summary_status == "pending"]
            while True:
                cursor = await connection.execute(SELECT_AFTER, [self.last_id, PAGE])
                rows = await cursor.fetchall()
                self._publish(BookEvent.from_row(row) for row in rows)
                if len(rows) < PAGE:
                    break
            # Summaries written while it was not listening.
            cursor = await connection.execute(SELECT_IDS, [pending])
            self._publish_changes(BookEvent.from_row(row) for row in await cursor.fetchall())
        # Every book above the floor is in memory: all of them, until the buffer is full.
        oldest = next(iter(self.recent), None)
        self.floor = oldest - 1 if oldest is not None and len(self.recent) >= settings.LIVE_BUFFER else 0

    def _remember(self, books: Iterable[BookEvent]) -> list[BookEvent]:
        new = []
        for book in books:
            if book.id in self.recent:
                continue  # announced twice (committed while the listener started): once is enough
            self.recent[book.id] = book
            new.append(book)
            self.last_id = max(self.last_id, book.id)
        while len(self.recent) > settings.LIVE_BUFFER:
            dropped, _ = self.recent.popitem(last=False)
            self.floor = max(self.floor or 0, dropped)
        return new

    def _publish(self, books: Iterable[BookEvent]) -> None:
        for book in self._remember(books):
            for subscriber in list(self.subscribers):
                subscriber.offer(book)

    def _publish_changes(self, books: Iterable[BookEvent]) -> None:
        """Books known to have changed: kept as they are now, and announced if their summary is new."""
        for book in books:
            if self.recent.get(book.id) == book:
                continue  # nothing new to say
            if book.id in self.recent:
                self.recent[book.id] = book  # stays in its place: the order is by id
            change = BookChange(book)
            for subscriber in list(self.subscribers):
                subscriber.offer(change)


hub = Hub()
