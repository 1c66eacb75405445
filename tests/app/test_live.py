"""Live books (books/live.py): the stream, the long-poll and writes from a staff session, against Postgres.

Each test gets a fresh Hub; streams are ended the way the server ends them, by
the drain (core.draining), once the test has seen what it waits for.
"""

import asyncio
import json
import re
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.test import override_settings

from books import live
from books.models import Book
from core import draining

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "t0ken-for-live-tests"
CSRF = "c" * 32  # a CSRF cookie and the same secret as its token, as a page of this site sends them


@pytest.fixture(autouse=True)
def fresh_hub(monkeypatch):
    monkeypatch.setattr(live, "hub", live.Hub())
    monkeypatch.setattr(draining, "_draining", False)


def books_in(chunks: list[bytes]) -> list[int]:
    return [int(n) for n in re.findall(rb"^id: (\d+)\nevent: book\n", b"".join(chunks), re.MULTILINE)]


def insert_like_psql(title: str) -> None:
    """A book written without Django: the trigger announces it all the same."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO books_book (title, created_at) VALUES (%s, now())", [title])
    connection.close()


class StreamUntil:
    """on_send for a stream: collects the body, calls `step(ids)` on each book, ends the stream on `done(ids)`."""

    def __init__(self, done, step=None) -> None:
        self.chunks: list[bytes] = []
        self.done, self.step = done, step
        self.tasks: list[asyncio.Future] = []

    def __call__(self, message: dict) -> None:
        body = message.get("body", b"")
        if not body:
            return
        self.chunks.append(body)
        ids = books_in(self.chunks)
        if self.step is not None:
            work = self.step(ids, body)
            if work is not None:
                self.tasks.append(asyncio.ensure_future(work))
        if self.done(ids):
            draining.begin()


# --- The stream --------------------------------------------------------------------------
def test_a_stream_replays_what_was_missed_then_goes_live(asgi):
    first = [Book.objects.create(title=f"book {n}") for n in range(5)]
    after = first[1].id

    def add_one_when_caught_up(ids, body):
        if ids == [b.id for b in first[2:]] and b"event: book" in body:
            return Book.objects.acreate(title="committed while streaming")
        return None

    until = StreamUntil(lambda ids: len(ids) >= 4, add_one_when_caught_up)
    response = asgi.get("/books/stream/", headers={"Last-Event-ID": str(after)}, on_send=until)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert response["X-Accel-Buffering"] == "no"
    newest = Book.objects.get(title="committed while streaming")
    assert books_in(until.chunks) == [b.id for b in first[2:]] + [newest.id]  # in order, each once
    assert until.chunks[0].startswith(b"retry: 2000\n")
    data = json.loads(re.search(rb"data: (.*)\n", until.chunks[-2] + until.chunks[-1]).group(1))
    assert data == {
        "id": newest.id,
        "title": newest.title,
        "created_at": newest.created_at.isoformat(),
        "summary_status": "pending",  # its task is queued: no worker runs in this test
        "summary": "",
        "summary_error": "",
    }
    assert response.messages[-1] == {"type": "http.response.body"}  # ended properly, by the drain


def test_the_last_event_id_header_wins_over_the_query(asgi):
    books = [Book.objects.create(title=f"book {n}") for n in range(3)]
    until = StreamUntil(lambda ids: len(ids) >= 1)
    asgi.get("/books/stream/", {"after": "0"}, headers={"Last-Event-ID": str(books[1].id)}, on_send=until)
    assert books_in(until.chunks) == [books[2].id]
    until = StreamUntil(lambda ids: len(ids) >= 2)
    asgi.get("/books/stream/", {"after": str(books[0].id)}, on_send=until)
    assert books_in(until.chunks) == [books[1].id, books[2].id]


@pytest.mark.parametrize("header", ["abc", "-1", "1.5", "", "1 2"])
def test_a_malformed_last_event_id_is_a_400(asgi, header):
    response = asgi.get("/books/stream/", headers={"Last-Event-ID": header})
    assert response.status_code == 400 and "Last-Event-ID" in response.json()["error"]


@pytest.mark.parametrize("after", ["x", "-3", "2e3", "99999999999999999999", "\u0661"])
def test_a_malformed_after_is_a_400(asgi, after):
    for path in ("/books/stream/", "/books/updates/"):
        response = asgi.get(path, {"after": after})
        assert response.status_code == 400 and "after" in response.json()["error"], path


def test_a_book_written_without_django_is_announced(asgi):
    def insert_when_open(ids, body):
        return sync_to_async(insert_like_psql)("from psql") if body.startswith(b"retry:") else None

    until = StreamUntil(lambda ids: len(ids) >= 1, insert_when_open)
    asgi.get("/books/stream/", on_send=until)
    assert books_in(until.chunks) == [Book.objects.get(title="from psql").id]


def test_a_rolled_back_book_is_never_announced(asgi):
    @sync_to_async
    def roll_back_then_commit() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            Book.objects.create(title="rolled back")
            raise RuntimeError
        Book.objects.create(title="committed")
        connection.close()

    def when_open(ids, body):
        return roll_back_then_commit() if body.startswith(b"retry:") else None

    until = StreamUntil(lambda ids: len(ids) >= 1, when_open)
    asgi.get("/books/stream/", on_send=until)
    assert books_in(until.chunks) == [Book.objects.get(title="committed").id]
    assert not Book.objects.filter(title="rolled back").exists()


@override_settings(LIVE_KEEPALIVE=0.2)
def test_a_quiet_stream_sends_comments(asgi):
    until = StreamUntil(lambda ids: False)
    until.done = lambda ids: b"".join(until.chunks).count(b": keepalive\n\n") >= 2
    response = asgi.get("/books/stream/", on_send=until)
    assert response.status_code == 200 and response.elapsed < 10


def test_stats_on_request(asgi):
    until = StreamUntil(lambda ids: False)
    until.done = lambda ids: b"event: stats" in b"".join(until.chunks)
    asgi.get("/books/stream/", {"stats": "1"}, on_send=until)
    stats = json.loads(re.search(rb"event: stats\ndata: (.*)\n", b"".join(until.chunks)).group(1))
    assert stats["streams"] >= 1 and stats["threads"] >= 1 and stats["pid"] > 0


@override_settings(LIVE_QUEUE_SIZE=2)
def test_a_stream_that_falls_behind_is_ended_with_a_retry_hint(asgi):
    def flood_when_open(ids, body):
        if body.startswith(b"retry:"):  # five books at once, into a queue of two: more than it may hold
            live.hub._publish(live.BookEvent(10_000 + n, f"flood {n}", "2026-01-01T00:00:00+00:00") for n in range(5))

    until = StreamUntil(lambda ids: False, flood_when_open)
    response = asgi.get("/books/stream/", on_send=until)
    body = b"".join(until.chunks)
    assert response.elapsed < 10 and books_in(until.chunks) == []
    assert body.endswith(b"retry: 2000\n: behind; reconnect with Last-Event-ID\n\n")


def test_a_subscriber_holds_a_bounded_queue():
    subscriber = live.Subscriber(3, clock=(live.Signal.KEEPALIVE,))
    books = [live.BookEvent(n, "t", "c") for n in range(5)]
    for book in books[:3]:
        subscriber.offer(book)
    subscriber.offer(live.Signal.KEEPALIVE)
    subscriber.offer(live.Signal.KEEPALIVE)  # not yet taken: once is enough
    assert list(subscriber.items) == [*books[:3], live.Signal.KEEPALIVE] and not subscriber.ended
    subscriber.offer(books[3])
    assert subscriber.ended and list(subscriber.items) == [live.Signal.OVERFLOW]
    subscriber.offer(books[4])  # ended: nothing more
    subscriber.offer(live.Signal.DRAIN)
    assert asyncio.run(subscriber.take()) == [live.Signal.OVERFLOW] and not subscriber.items


def test_a_subscriber_waits_for_what_is_offered_and_takes_all_of_it():
    async def scenario():
        subscriber = live.Subscriber(10)
        taking = asyncio.ensure_future(subscriber.take())
        await asyncio.sleep(0.01)
        assert not taking.done()
        books = [live.BookEvent(n, "t", "c") for n in range(2)]
        for book in books:  # offered in one turn of the loop: taken at once
            subscriber.offer(book)
        assert await taking == books
        subscriber.offer(live.Signal.DRAIN)
        assert await subscriber.take() == [live.Signal.DRAIN]

    asyncio.run(scenario())


def test_streams_hold_no_database_connection_of_the_pool(asgi):
    """The stream waits with no pool connection checked out: viewers cost the database nothing."""
    pool = connection.pool

    def check_when_open(ids, body):
        if body.startswith(b"retry:"):
            until.used = pool.get_stats()["pool_size"] - pool.get_stats()["pool_available"]
        return None

    until = StreamUntil(lambda ids: hasattr(until, "used"), check_when_open)
    asgi.get("/books/stream/", on_send=until)
    assert until.used == 0


# --- Long-polling ------------------------------------------------------------------------
def test_long_poll_answers_at_once_when_there_are_books(asgi):
    books = [Book.objects.create(title=f"book {n}") for n in range(3)]
    answer = asgi.get("/books/updates/", {"after": str(books[0].id), "wait": "20"})
    assert answer.status_code == 200 and answer.elapsed < 5
    assert [b["id"] for b in answer.json()["books"]] == [books[1].id, books[2].id]
    assert answer.json()["last_id"] == books[2].id


def test_long_poll_answers_within_a_second_of_a_commit(asgi):
    after = Book.objects.create(title="before").id
    committed: list[float] = []

    def commit_later() -> None:
        time.sleep(0.5)
        insert_like_psql("while waiting")
        committed.append(time.monotonic())

    writer = threading.Thread(target=commit_later)
    writer.start()
    answer = asgi.get("/books/updates/", {"after": str(after), "wait": "20"})
    answered = time.monotonic()
    writer.join()
    assert [b["title"] for b in answer.json()["books"]] == ["while waiting"]
    assert answered - committed[0] < 1.0


def test_long_poll_times_out_with_nothing(asgi):
    after = Book.objects.create(title="only").id
    answer = asgi.get("/books/updates/", {"after": str(after), "wait": "0.5"})
    assert answer.json() == {"books": [], "last_id": after}
    assert 0.5 <= answer.elapsed < 5


@pytest.mark.parametrize("wait", ["31", "-1", "abc", "nan", "1e1"])
def test_long_poll_refuses_bad_waits(asgi, wait):
    answer = asgi.get("/books/updates/", {"wait": wait})
    assert answer.status_code == 400 and "wait" in answer.json()["error"]


# --- Writes from the live page: a staff session and its CSRF token -----------------------------
def session_of(user: User) -> str:
    session = SessionStore()
    session.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
                    HASH_SESSION_KEY: user.get_session_auth_hash()})  # fmt: skip
    session.create()
    return session.session_key


def staff_cookie() -> str:
    staff, _ = User.objects.get_or_create(username="staff", defaults={"is_staff": True})
    return f"sessionid={session_of(staff)}; csrftoken={CSRF}"


def test_a_staff_session_posts_with_its_csrf_token(asgi):
    created = asgi.post("/books/", {"title": "from the page"}, headers={"Cookie": staff_cookie(), "X-CSRFToken": CSRF})
    assert created.status_code == 201 and created.json()["title"] == "from the page"


def test_a_staff_session_without_the_csrf_token_is_refused(asgi):
    refused = asgi.post("/books/", {"title": "forged"}, headers={"Cookie": staff_cookie()})
    assert refused.status_code == 403
    assert not Book.objects.filter(title="forged").exists()


def test_the_page_form_without_javascript_comes_back_to_the_page(asgi):
    form = f"title=by+form&csrfmiddlewaretoken={CSRF}".encode()
    answer = asgi.post("/books/", form, content_type="application/x-www-form-urlencoded",
                       headers={"Cookie": staff_cookie()})  # fmt: skip
    assert answer.status_code == 303 and answer["Location"] == "/"
    assert Book.objects.filter(title="by form").exists()
    empty = asgi.post("/books/", f"title=&csrfmiddlewaretoken={CSRF}".encode(),
                      content_type="application/x-www-form-urlencoded", headers={"Cookie": staff_cookie()})  # fmt: skip
    assert empty.status_code == 400


def test_a_session_that_is_not_staff_gets_no_write(asgi):
    cookie = f"sessionid={session_of(User.objects.create(username='reader'))}; csrftoken={CSRF}"
    with override_settings(API_TOKEN=TOKEN):
        refused = asgi.post("/books/", {"title": "no"}, headers={"Cookie": cookie, "X-CSRFToken": CSRF})
    assert refused.status_code == 401


@override_settings(API_TOKEN=TOKEN)
def test_the_bearer_token_never_needs_csrf_even_beside_a_session(asgi):
    headers = {"Cookie": staff_cookie(), "Authorization": f"Bearer {TOKEN}"}
    assert asgi.post("/books/", {"title": "by token"}, headers=headers).status_code == 201
    wrong = {"Cookie": staff_cookie(), "Authorization": "Bearer wrong", "X-CSRFToken": CSRF}
    assert asgi.post("/books/", {"title": "by token"}, headers=wrong).status_code == 401  # a token is judged as one


def test_a_written_summary_reaches_open_streams_as_an_update_without_an_id(asgi):
    book = Book.objects.create(title="summarised later")

    @sync_to_async
    def write_summary() -> None:
        Book.objects.filter(pk=book.pk).update(summary="a summary")  # as books.tasks does, or psql
        connection.close()

    def write_when_open(ids, body):
        return write_summary() if body.startswith(b"retry:") else None

    until = StreamUntil(lambda ids: False, write_when_open)
    until.done = lambda ids: b"event: book-update" in b"".join(until.chunks)
    response = asgi.get("/books/stream/", {"after": str(book.id)}, on_send=until)
    assert response.status_code == 200 and books_in(until.chunks) == []  # not a new book
    update = re.search(rb"(?m)^(id: .*\n)?event: book-update\ndata: (.*)\n", b"".join(until.chunks))
    assert update.group(1) is None  # no id: the client's resume point stays where it was
    data = json.loads(update.group(2))
    assert data["id"] == book.id and data["summary_status"] == "done" and data["summary"] == "a summary"
    # The page rendered after it shows the summary too (the Hub keeps books as they are now).
    assert "a summary" in asgi.get("/").content.decode()
