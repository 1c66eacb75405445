"""What a client and the outside world can see of a differential run, with only per-run values normalised.

What is normalised, and why: :class:`Normaliser`. See docs/async-safety.md, "How it is shown to behave
like Django".
"""

import logging
import re
import time
from http.cookies import SimpleCookie

from differential_driver import Exchange, response_headers
from differential_journal import REQUEST
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.db import connections
from django.http import HttpRequest

from books.models import Book

NONCE = re.compile(r"'nonce-([^']+)'")


class Normaliser:
    """Makes two runs comparable: only what differs from run to run is normalised, each for a reason.

    - Cookie values that are random per run (the session key, the CSRF secret) become the label of the request
      that first received them, so "the same session again" and "a new session" still compare.
    - The messages cookie is signed with a timestamp, so it is compared decoded.
    - A cookie's expires= date is now + max-age (max-age itself is compared).
    - Database ids and session keys are random or sequence-dependent: rows are compared by content, a session
      by its data, a user id by its username.
    - A Content-Security-Policy nonce is new on every response: each one the policy names becomes the label of
      its request, in the header and the body alike, so a page whose nonce is not its policy's still differs.

    Nothing else is: X-Request-ID is given by the client (as nginx gives it), and no view puts a token or key in
    a body.
    """

    def __init__(self, fixtures: dict[str, str]) -> None:
        self.names = {value: f"<{name} of the fixture>" for name, value in fixtures.items()}

    def name(self, value: str, what: str, label: str) -> str:
        return self.names.setdefault(value, f"<{what} first sent to {label}>")

    def cookie(self, header: bytes, label: str) -> list:
        normalised = []
        for morsel in SimpleCookie(header.decode("latin1")).values():
            value = morsel.value
            if value and morsel.key == settings.SESSION_COOKIE_NAME:
                value = self.name(value, "session key", label)
            elif value and morsel.key == settings.CSRF_COOKIE_NAME:
                value = self.name(value, "CSRF secret", label)
            elif value and morsel.key == CookieStorage.cookie_name:
                decoded = CookieStorage(HttpRequest())._decode(value)
                value = [f"{m.level}:{m.message}:{m.extra_tags}" for m in decoded] if decoded else "<undecodable>"
            attributes = {k: ("<date>" if k == "expires" else v) for k, v in morsel.items() if v}
            normalised.append((morsel.key, value, attributes))
        return normalised

    def response(self, label: str, exchange: Exchange) -> dict:
        nonces = {
            nonce
            for name, value in response_headers(exchange.messages)
            if name.lower().startswith(b"content-security-policy")
            for nonce in NONCE.findall(value.decode("latin1"))
        }

        def denonced(text: str) -> str:
            for nonce in nonces:
                text = text.replace(nonce, f"<nonce of {label}>")
            return text

        headers = []
        for name, value in response_headers(exchange.messages):
            cookie = name.lower() == b"set-cookie"
            headers.append((name.decode(), self.cookie(value, label) if cookie else denonced(value.decode())))
        start = [m for m in exchange.messages if m["type"] == "http.response.start"]
        bodies = [m for m in exchange.messages if m["type"] == "http.response.body"]
        body = b"".join(m.get("body", b"") for m in bodies)
        return {
            "status": start[0]["status"] if start else None,
            "headers": headers,
            "body": denonced(body.decode("latin1")).encode("latin1") if nonces else body,
            "messages": [(len(m.get("body", b"")), m.get("more_body", False)) for m in bodies],
            "application_raised": exchange.error,
            "sent_after_client_left": exchange.dropped,
        }

    def database(self) -> dict:
        """The rows user code may have written, by content."""
        usernames = dict(User.objects.values_list("pk", "username"))
        sessions = []
        for session in Session.objects.order_by("session_key"):
            data = session.get_decoded()
            if SESSION_KEY in data:
                data[SESSION_KEY] = f"<id of {usernames.get(int(data[SESSION_KEY]))}>"
            sessions.append((self.names.get(session.session_key, "<a session key never sent>"), data))
        return {
            "books": list(Book.objects.values_list("title", flat=True)),
            "sessions": sorted(sessions, key=repr),
            "users": sorted((u.username, u.last_login is None) for u in User.objects.all()),
        }


def clear_database() -> None:
    """What a row wrote, gone before the other handler's run (the test's transaction=True flush comes later)."""
    Book.objects.all().delete()
    Session.objects.all().delete()
    User.objects.all().delete()


class LogRecords(logging.Handler):
    """Django's log lines (django.request, django.security...), by the request they were written for."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: dict[str, list] = {}

    def emit(self, record: logging.LogRecord) -> None:
        raised = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        line = (record.name, record.levelname, record.getMessage(), getattr(record, "status_code", None), raised)
        self.lines.setdefault(REQUEST.get(), []).append(line)

    def __enter__(self) -> "LogRecords":
        logging.getLogger("django").addHandler(self)  # "django" does not propagate (settings.LOGGING)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("django").removeHandler(self)


def connections_in_use(settle_seconds: float) -> int:
    """Connections the pool has lent and not got back, once they had `settle_seconds` to come back."""
    deadline = time.monotonic() + settle_seconds
    while True:
        stats = connections["default"].pool.get_stats()
        in_use = stats["pool_size"] - stats["pool_available"]
        if in_use == 0 or time.monotonic() > deadline:
            return in_use
        time.sleep(0.05)
