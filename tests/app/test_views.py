"""Every route of the contract, through config.asgi.application as a server drives it, with its failure paths."""

import json
import time

import pytest
from django.test import override_settings

from books.models import TITLE_MAX_LENGTH, Book

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_index_links_every_demo(asgi):
    response = asgi.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    for link in (
        "/now/",
        "/async/?seconds=1",
        "/books/",
        "/sync-wrapped/",
        "/events/?count=5",
        "/healthz",
        "/readyz",
        "/admin/",
    ):
        assert f'href="{link}"' in body


def test_now_is_the_articles_html(asgi):
    response = asgi.get("/now/")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.startswith("<html><body>It is now ") and body.endswith(".</body></html>")


@pytest.mark.parametrize("seconds", ["0", "0.05", ".02", "0."])
def test_async_view_sleeps_then_answers(asgi, seconds):
    started = time.monotonic()
    response = asgi.get("/async/", {"seconds": seconds})
    assert response.status_code == 200
    assert response.content.decode() == "非同期ビューのレスポンス"
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert time.monotonic() - started >= float(seconds)


@pytest.mark.parametrize(
    "seconds", ["-1", "10.5", "11", "abc", "", "nan", "inf", "-inf", "1_0", "1e0", "+1", " 1", "\u0661"]
)
def test_async_view_rejects_out_of_range_seconds(asgi, seconds):
    response = asgi.get("/async/", {"seconds": seconds})
    assert response.status_code == 400
    assert "seconds" in response.json()["error"]


def test_async_view_refuses_other_methods(asgi):
    assert asgi.post("/async/").status_code == 403  # the CSRF check comes first, as for any form
    secret = "a" * 32  # a CSRF cookie and its token, as a page of this site would send them
    assert asgi.post("/async/", headers={"Cookie": f"csrftoken={secret}", "X-CSRFToken": secret}).status_code == 405


def test_books_lists_titles_in_order(asgi):
    for title in ("Zen", "Alpha", "Mid"):
        Book.objects.create(title=title)
    response = asgi.get("/books/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == "Alpha,Mid,Zen"


def test_books_empty(asgi):
    response = asgi.get("/books/")
    assert response.status_code == 200 and response.content == b""


@override_settings(API_TOKEN=TOKEN)
def test_post_book_creates_it(asgi):
    title = "Robert'); DROP TABLE books_book;--"
    response = asgi.post("/books/", {"title": title}, content_type="application/json", headers=AUTH)
    assert response.status_code == 201
    data = response.json()
    assert data["title"] == title and isinstance(data["id"], int) and data["created_at"]
    assert Book.objects.get(id=data["id"]).title == title  # stored verbatim, table intact


@override_settings(API_TOKEN=TOKEN)
def test_post_book_accepts_the_longest_title(asgi):
    title = "x" * TITLE_MAX_LENGTH
    response = asgi.post("/books/", {"title": title}, content_type="application/json", headers=AUTH)
    assert response.status_code == 201


@override_settings(API_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_post_book_needs_the_token(asgi, headers):
    response = asgi.post("/books/", {"title": "t"}, content_type="application/json", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert not Book.objects.exists()


@override_settings(API_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"",
        b"[]",
        b'"title"',
        b"42",
        b"{}",
        b'{"title": ""}',
        b'{"title": "   "}',
        b'{"title": 7}',
        b'{"title": null}',
        b'{"title": ["a"]}',
        json.dumps({"title": "x" * (TITLE_MAX_LENGTH + 1)}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion limit
    ],
)
def test_post_book_rejects_bad_bodies(asgi, body):
    response = asgi.post("/books/", body, content_type="application/json", headers=AUTH)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]
    assert not Book.objects.exists()


@override_settings(API_TOKEN=None)
def test_post_book_is_forbidden_without_a_configured_token(asgi):
    response = asgi.post("/books/", {"title": "t"}, content_type="application/json", headers=AUTH)
    assert response.status_code == 403
    assert not Book.objects.exists()


def test_sync_wrapped_uses_both_forms(asgi):
    Book.objects.create(title="First")
    Book.objects.create(title="Second")
    response = asgi.get("/sync-wrapped/")
    assert response.status_code == 200
    lines = response.content.decode().splitlines()
    assert lines[0].startswith("sync_to_async(sync_only1)(): pbkdf2 digest ")
    assert lines[1] == "@sync_to_async sync_only2(): 2 books in one transaction, latest 'Second'"


def test_events_stream_count_events(asgi):
    response = asgi.get("/events/", {"count": "2"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    assert len(response.chunks) >= 2  # streamed as they happen, not as one body
    events = [e for e in response.content.decode().split("\n\n") if e]
    assert len(events) == 2
    first = dict(line.split(": ", 1) for line in events[0].splitlines())
    assert first["id"] == "1" and first["event"] == "tick"
    assert json.loads(first["data"])["of"] == 2


@pytest.mark.parametrize("count", ["0", "61", "-1", "abc", "", "1.5", "\u0663"])
def test_events_rejects_bad_counts(asgi, count):
    response = asgi.get("/events/", {"count": count})
    assert response.status_code == 400


def test_unknown_route_is_404_without_a_trace(asgi):
    response = asgi.get("/no-such-page/")
    assert response.status_code == 404
    assert b"Traceback" not in response.content


def test_sync_orm_in_async_code_still_raises(call_async):
    from django.core.exceptions import SynchronousOnlyOperation

    async def article_mistake() -> list[str]:
        return [book.title for book in Book.objects.all()]

    with pytest.raises(SynchronousOnlyOperation):
        call_async(article_mistake)
