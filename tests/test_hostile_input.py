"""Hostile input, sent raw through nginx on 127.0.0.1.

Each request gets a 4xx (the SQL-looking titles: a 201, stored verbatim),
never a stack trace; none changes the database unless it is meant to; and
after each the app still answers its probes. The app's own tests (tests/app)
cover the views' validation one by one; these go through the whole stack.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.stack import Stack
from tests import load


@dataclass
class Raw:
    status: int | None  # None: nginx closed the connection without an answer
    head: str
    body: bytes
    elapsed: float


def raw(stack: Stack, data: bytes, timeout: float = 30) -> Raw:
    """Send bytes as they are; read until nginx closes the connection."""
    started = time.monotonic()
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx answered and closed before reading everything we sent
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return Raw(int(match.group(1)) if match else None, head.decode("latin-1"), body, time.monotonic() - started)


def request(
    port: int, method: str, target: bytes | str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """An HTTP/1.1 request as bytes, with the stack's Host and `Connection: close` unless given."""
    target = target.encode("latin-1") if isinstance(target, str) else target
    fields = {"Host": f"localhost:{port}", "Connection": "close", **(headers or {})}
    if body and "Content-Length" not in fields and "Transfer-Encoding" not in fields:
        fields["Content-Length"] = str(len(body))
    lines = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in fields.items())
    return method.encode() + b" " + target + b" HTTP/1.1\r\n" + lines + b"\r\n" + body


def books(stack: Stack) -> bytes:
    response = stack.get("/books/")
    assert response.status == 200
    return response.body


def json_headers(token: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def no_stack_trace(response: Raw) -> None:
    for sign in (b"Traceback", b'File "', b"django.", b"psycopg"):
        assert sign not in response.body, response.body[:2000]


@pytest.fixture
def unchanged(stack: Stack) -> Iterator[None]:
    """The books before and after are the same, and the app still answers its probes."""
    before = books(stack)
    yield
    assert books(stack) == before, "the request changed the database"
    assert stack.get("/healthz").status == 200
    assert stack.get("/readyz").status == 200


def hostile_cases(port: int, token: str) -> dict[str, tuple[bytes, set[int]]]:
    """Each case: the raw request, and the statuses it may get."""
    title = json.dumps({"title": "must not be stored"}).encode()
    long = "x" * 9000
    return {
        # Bodies and framing
        "oversized body (2 MiB)": (
            request(port, "POST", "/books/", {**json_headers(token), "Content-Length": str(2 << 20)}, b"{"),
            {413},
        ),
        "Transfer-Encoding and Content-Length together": (
            request(
                port,
                "POST",
                "/books/",
                {**json_headers(token), "Content-Length": "4", "Transfer-Encoding": "chunked"},
                f"{len(title):x}\r\n".encode() + title + b"\r\n0\r\n\r\n",
            ),
            {400},
        ),
        "malformed JSON": (request(port, "POST", "/books/", json_headers(token), b'{"title": '), {400}),
        "JSON nested 100,000 deep": (
            request(port, "POST", "/books/", json_headers(token), b"[" * 100_000 + b"]" * 100_000),
            {400},
        ),
        "body not UTF-8": (request(port, "POST", "/books/", json_headers(token), b'{"title": "\xff"}'), {400}),
        "title not a string": (request(port, "POST", "/books/", json_headers(token), b'{"title": 1}'), {400}),
        # Tokens
        "write without a token": (request(port, "POST", "/books/", json_headers(), title), {401}),
        "write with a wrong token": (request(port, "POST", "/books/", json_headers("x" + token), title), {401}),
        "write with a token in another scheme": (
            request(port, "POST", "/books/", {**json_headers(), "Authorization": f"Basic {token}"}, title),
            {401},
        ),
        # Hosts
        "unknown Host, write with a valid token": (
            request(port, "POST", "/books/", {**json_headers(token), "Host": "evil.example"}, title),
            {400},
        ),
        "unknown Host, page": (request(port, "GET", "/", {"Host": "evil.example"}), {400}),
        "Host with userinfo": (request(port, "GET", "/now/", {"Host": f"localhost:{port}@evil.example"}), {400}),
        "two Host headers": (
            f"GET /now/ HTTP/1.1\r\nHost: localhost:{port}\r\nHost: evil.example\r\n\r\n".encode(),
            {400},
        ),
        "no Host (HTTP/1.0)": (b"GET /now/ HTTP/1.0\r\n\r\n", {400}),
        # Lengths
        "URL over 8 KiB": (request(port, "GET", f"/now/?q={long}"), {414}),
        "header over 8 KiB": (request(port, "GET", "/now/", {"X-Long": long}), {400}),
        "cookie over 8 KiB": (request(port, "GET", "/now/", {"Cookie": f"sessionid={long}"}), {400}),
        "headers over 32 KiB in all": (
            request(port, "GET", "/now/", {f"X-H{n}": "y" * 4000 for n in range(10)}),
            {400},
        ),
        # Paths under /static/: ".." is refused by nginx, the rest finds no file
        "traversal ../ under /static/": (request(port, "GET", "/static/../../../../etc/passwd"), {400}),
        "traversal %2e%2e under /static/": (request(port, "GET", "/static/%2e%2e/%2e%2e/etc/passwd"), {400}),
        "traversal ..%2f under /static/": (request(port, "GET", "/static/..%2f..%2f..%2fetc%2fpasswd"), {400}),
        "traversal to the app's code": (request(port, "GET", "/static/../config/settings.py"), {400}),
        "traversal out of /static/ to a page": (request(port, "GET", "/static/../admin/"), {400}),
        "traversal next to the alias": (request(port, "GET", "/static../etc/passwd"), {404}),
        "traversal with backslashes": (request(port, "GET", "/static/..\\..\\..\\etc\\passwd"), {404}),
        "double slash under /static/": (request(port, "GET", "/static//etc/passwd"), {404}),
        # Query strings
        "invalid UTF-8 in seconds (%ff)": (request(port, "GET", "/async/?seconds=%ff"), {400}),
        "invalid UTF-8 in count (%c3%28)": (request(port, "GET", "/events/?count=%c3%28"), {400}),
        "raw bytes 0xff in the query": (request(port, "GET", b"/async/?seconds=\xff\xfe"), {400}),
        "seconds above 10": (request(port, "GET", "/async/?seconds=10.5"), {400}),
        "seconds as exponent": (request(port, "GET", "/async/?seconds=1e1"), {400}),
        "seconds infinite": (request(port, "GET", "/async/?seconds=inf"), {400}),
        "count 0": (request(port, "GET", "/events/?count=0"), {400}),
        "count 61": (request(port, "GET", "/events/?count=61"), {400}),
        "count negative": (request(port, "GET", "/events/?count=-1"), {400}),
        "count of 30 digits": (request(port, "GET", "/events/?count=" + "9" * 30), {400}),
        "count in full-width digits": (request(port, "GET", "/events/?count=%EF%BC%95"), {400}),
    }


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("case", list(hostile_cases(0, "token")))  # the names; the requests need the stack
def test_hostile_request(stack: Stack, case: str):
    data, expected = hostile_cases(stack.port, stack.api_token)[case]
    response = raw(stack, data)
    print(f"{case}: {response.status} in {response.elapsed:.2f} s")
    assert response.status in expected, f"{case}: {response.head[:300]}\n{response.body[:500]!r}"
    no_stack_trace(response)
    assert b"root:" not in response.body and b"SECRET_KEY" not in response.body


def test_sql_looking_titles_are_stored_verbatim(stack: Stack):
    titles = [
        "Robert'); DROP TABLE books_book;--",
        "' OR '1'='1",
        '"; SELECT pg_sleep(10); --',
        "1; UPDATE books_book SET title = 'pwned'",
    ]
    count = len(books(stack).split(b",")) if books(stack) else 0
    for title in titles:
        started = time.monotonic()
        created = stack.post_json("/books/", {"title": title}, token=stack.api_token)
        assert created.status == 201 and created.json()["title"] == title
        assert time.monotonic() - started < 5, "pg_sleep did not run"
    listing = books(stack).decode()
    for title in titles:
        assert title in listing
    assert "pwned" not in listing.split(",")  # no UPDATE ran
    assert len(listing.split(",")) >= count + len(titles)  # the table is still there, with every row


def test_slow_headers_and_slow_body_are_cut_off(stack: Stack):
    """nginx's client_header_timeout and client_body_timeout (10 s) end them; the app never sees them."""
    before = books(stack)
    results: dict[str, Raw] = {}

    def slow(name: str, first: bytes) -> None:
        results[name] = raw(stack, first, timeout=40)  # sends the start, then nothing

    title = json.dumps({"title": "slow body"}).encode()
    partial_body = (
        request(
            stack.port, "POST", "/books/", {**json_headers(stack.api_token), "Content-Length": str(len(title))}, b""
        )
        + title[:5]
    )
    partial_headers = f"GET /now/ HTTP/1.1\r\nHost: localhost:{stack.port}\r\n".encode()
    threads = [
        threading.Thread(target=slow, args=("headers", partial_headers)),
        threading.Thread(target=slow, args=("body", partial_body)),
    ]
    for thread in threads:
        thread.start()
    # Meanwhile the app serves everyone else.
    assert stack.get("/now/").status == 200
    for thread in threads:
        thread.join(45)
    for name, response in results.items():
        print(f"slow {name}: {response.status} after {response.elapsed:.1f} s")
        assert response.status in (None, 408), f"{name}: {response.head}"
        assert 8 < response.elapsed < 30, f"{name}: cut off after {response.elapsed:.1f} s"
    assert books(stack) == before


def test_header_names_with_underscores_never_reach_the_app(stack: Stack):
    """nginx drops them, so X_CSRFToken cannot stand in for X-CSRFToken (both are HTTP_X_CSRFTOKEN to Django)."""
    page = stack.get("/admin/login/")
    csrf = re.search(r"csrftoken=([^;]+)", page.headers["set-cookie"]).group(1)
    base = {"Cookie": f"csrftoken={csrf}", "Origin": f"http://localhost:{stack.port}"}

    def logout(header: str) -> int:
        return stack.request("POST", "/admin/logout/", body=b"", headers={**base, header: csrf}).status

    # Control: with the dash, Django's CSRF check passes (the logged-out page or a redirect).
    assert logout("X-CSRFToken") in (200, 302)
    # With underscores the header is dropped: no token, so CSRF fails.
    assert logout("X_CSRFToken") == 403


def test_repeated_admin_login_attempts_are_rate_limited(stack: Stack):
    """From one client address (as the TLS proxy reports it), login POSTs beyond the burst get 429."""

    def attempts(client: str, count: int) -> list[int]:
        # From inside the nginx container: 127.0.0.1 is the trusted proxy by
        # default, so nginx takes the client's address from X-Forwarded-For.
        script = (
            f'for i in $(seq {count}); do curl -s -o /dev/null -w "%{{http_code}}\\n" -X POST '
            f'-H "Host: localhost" -H "X-Forwarded-For: {client}" -d "username=admin&password=guess$i" '
            "http://127.0.0.1:8080/admin/login/; done"
        )
        return [int(code) for code in stack.exec("nginx", "sh", "-c", script).stdout.split()]

    before = books(stack)
    hammering = attempts("203.0.113.7", 20)
    print(f"20 login attempts from one address: {hammering}")
    assert 429 in hammering and hammering.count(429) >= 10, hammering
    assert set(hammering) <= {403, 429}  # 403: no CSRF token, the attempt reached Django and failed
    assert hammering[-1] == 429
    # Another client is not held up by the first, and the login page itself is never limited.
    assert attempts("203.0.113.8", 1) == [403]
    assert stack.get("/admin/login/").status == 200
    logs = stack.logs("nginx")
    assert "limiting requests" in logs and "203.0.113.7" in logs
    assert books(stack) == before


def test_a_flood_of_readiness_probes_costs_the_database_a_query_a_second(stack: Stack):
    """2,000 /readyz through nginx: at most one query per worker per second, and real requests do not notice."""
    workers = len(stack.gunicorn_workers())

    def transactions() -> int:
        # Every transaction the database has counted so far (its own psql call included).
        sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        return int(stack.psql(sql))

    def flood(alongside: load.Load | None = None) -> tuple[list[load.Result], float]:
        started = time.monotonic()
        probes = load.Load(stack.port, [load.get("/readyz")], threads=40, pause=0, max_requests=2000)
        if alongside is not None:
            alongside.start()
        with probes:
            results = probes.finish()
        if alongside is not None:
            alongside.stop()
        assert [r.status for r in results].count(200) == 2000, {r.describe() for r in results if r.status != 200}
        return results, time.monotonic() - started

    # Alone, so that every transaction counted is a probe's (or the counter's own): the task
    # worker, whose looks at its queue are transactions too, stopped meanwhile.
    worker = stack.container_id("worker")
    subprocess.run(["docker", "stop", worker], check=True, capture_output=True)  # nothing else touched
    try:
        before = transactions()
        probes, seconds = flood()
        time.sleep(2)  # Postgres publishes its counters about once a second
        spent = transactions() - before
    finally:
        subprocess.run(["docker", "start", worker], check=True, capture_output=True)
    print(f"{len(probes)} probes in {seconds:.1f} s on {workers} worker(s): {spent} transactions")
    # One query per worker per second of flood, plus the counter's own queries and room to spare.
    assert spent <= workers * (seconds + 3) + 10
    # Again, with real requests alongside: they all get through, and so does the next one.
    real = load.Load(stack.port, [load.get("/books/")], threads=2, pause=0.05, max_seconds=120)
    flood(real)
    assert real.results and all(r.status == 200 for r in real.results), {r.describe() for r in real.results}
    assert stack.get("/books/").status == 200
