"""The pages' security headers: Django's settings from the environment, its CSP with nonces, and the CSP drop-in.

Through config.asgi.application, as a server drives it (the asgi fixture).
nginx passes these headers on untouched: tests/test_hardening.py checks that
through nginx, tests/test_container_hosts.py without it.
"""

import asyncio
import re
import runpy

import pytest
from asgi_client import status, thread_growth
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.middleware import csp as django_csp
from django.test import RequestFactory, override_settings
from django.utils.csp import CSP

import config.settings
import core.dropins
from books.models import Book
from core.dropins import NO_HOP_SUBSTITUTES, ContentSecurityPolicyMiddleware
from core.handlers import ASGIHandler

CSP_PATH = "django.middleware.csp.ContentSecurityPolicyMiddleware"
ENFORCED, REPORT_ONLY = "Content-Security-Policy", "Content-Security-Policy-Report-Only"
SETTINGS_FILE = config.settings.__file__
HEADER_VARIABLES = (
    "DJANGO_CSP_REPORT_ONLY",
    "DJANGO_CSP_REPORT_URI",
    "DJANGO_REFERRER_POLICY",
    "DJANGO_X_FRAME_OPTIONS",
)


def directives(policy: str) -> dict[str, str]:
    return dict(d.strip().partition(" ")[::2] for d in policy.split(";") if d.strip())


def one(response, name: str) -> str:
    """The value of a header that must appear exactly once."""
    values = [value for key, value in response.header_list if key.lower() == name.lower()]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def page_nonce(html: str) -> str:
    (nonce,) = re.findall(r'<script nonce="([^"]+)">', html)
    return nonce


# --- The settings, from the environment -----------------------------------------------------
def settings_from(monkeypatch, **env: str) -> dict:
    """config/settings.py run afresh with `env` (and none of the header variables otherwise)."""
    for name in HEADER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(SETTINGS_FILE)


def test_defaults_enforce_the_policy(monkeypatch):
    values = settings_from(monkeypatch)
    policy = values["SECURE_CSP"]
    assert values["SECURE_CSP_REPORT_ONLY"] == {}
    assert policy["default-src"] == [CSP.SELF] and policy["script-src"] == [CSP.SELF, CSP.NONCE]
    assert policy["frame-ancestors"] == [CSP.NONE] and policy["object-src"] == [CSP.NONE]
    assert policy["base-uri"] == [CSP.SELF] and policy["form-action"] == [CSP.SELF]
    assert "report-uri" not in policy
    assert values["X_FRAME_OPTIONS"] == "DENY" and values["SECURE_REFERRER_POLICY"] == "same-origin"
    assert values["SECURE_CONTENT_TYPE_NOSNIFF"] is True


def test_report_only_moves_the_policy(monkeypatch):
    enforced = settings_from(monkeypatch)["SECURE_CSP"]
    values = settings_from(monkeypatch, DJANGO_CSP_REPORT_ONLY="true", DJANGO_CSP_REPORT_URI="/csp-reports/")
    assert values["SECURE_CSP"] == {}
    assert values["SECURE_CSP_REPORT_ONLY"] == {**enforced, "report-uri": ["/csp-reports/"]}


def test_framing_and_referrer_from_the_environment(monkeypatch):
    values = settings_from(monkeypatch, DJANGO_X_FRAME_OPTIONS="sameorigin", DJANGO_REFERRER_POLICY="no-referrer")
    assert values["X_FRAME_OPTIONS"] == "SAMEORIGIN"
    assert values["SECURE_CSP"]["frame-ancestors"] == [CSP.SELF]  # the two say the same
    assert values["SECURE_REFERRER_POLICY"] == "no-referrer"
    with pytest.raises(ImproperlyConfigured, match="DENY or SAMEORIGIN"):
        settings_from(monkeypatch, DJANGO_X_FRAME_OPTIONS="ALLOW-FROM https://example.com")


# --- The drop-in ------------------------------------------------------------------------------
def test_the_csp_middleware_runs_as_its_drop_in():
    assert CSP_PATH in settings.MIDDLEWARE
    assert NO_HOP_SUBSTITUTES[CSP_PATH] is ContentSecurityPolicyMiddleware
    assert issubclass(ContentSecurityPolicyMiddleware, django_csp.ContentSecurityPolicyMiddleware)


def test_the_csp_drop_in_never_hops(monkeypatch):
    def no_hop(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CSP middleware hopped to a thread")

    monkeypatch.setattr(core.dropins, "sync_to_async", no_hop)

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(f"<script nonce={request._csp_nonce}>")

    middleware = ContentSecurityPolicyMiddleware(view)
    response = asyncio.run(middleware(RequestFactory().get("/")))
    nonce = response.content.decode().removeprefix("<script nonce=").removesuffix(">")
    assert f"'nonce-{nonce}'" in directives(response[ENFORCED])["script-src"]


# The page lists the books from the worker's live Hub: memory, after one query of its own listener.
@pytest.mark.django_db(transaction=True)
def test_pages_take_no_thread_for_their_nonce():
    growth, results = thread_growth(ASGIHandler(), "/", b"", concurrency=50)
    assert all(status(r) == 200 for r in results)
    assert growth < 3, growth


# --- Pages, as the server gets them ---------------------------------------------------------------
@pytest.mark.django_db(transaction=True)  # the page lists the books
def test_a_page_carries_each_header_once_with_a_fresh_nonce(asgi):
    nonces = []
    for _ in range(2):
        response = asgi.get("/")
        assert response.status_code == 200
        assert one(response, "X-Frame-Options") == "DENY"
        assert one(response, "X-Content-Type-Options") == "nosniff"
        assert one(response, "Referrer-Policy") == "same-origin"
        assert REPORT_ONLY not in response
        policy = directives(one(response, ENFORCED))
        nonce = page_nonce(response.content.decode())
        assert policy["script-src"] == f"'self' 'nonce-{nonce}'"
        assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
        nonces.append(nonce)
    assert nonces[0] != nonces[1], "a nonce is used once"


def test_a_page_without_a_script_gets_no_nonce(asgi):
    response = asgi.get("/no-such-page/")
    assert response.status_code == 404
    assert directives(one(response, ENFORCED))["script-src"] == "'self'"


@pytest.mark.django_db(transaction=True)  # the page lists the books
def test_report_only_mode(asgi):
    policy = settings.SECURE_CSP
    with override_settings(SECURE_CSP={}, SECURE_CSP_REPORT_ONLY=policy):
        response = asgi.get("/")
    assert ENFORCED not in response
    nonce = page_nonce(response.content.decode())
    assert directives(one(response, REPORT_ONLY))["script-src"] == f"'self' 'nonce-{nonce}'"


@pytest.mark.django_db(transaction=True)
def test_the_embed_view_relaxes_framing_for_itself(asgi):
    Book.objects.create(title="Embeddable <b>")
    response = asgi.get("/books/embed/")
    assert response.status_code == 200
    assert "<li>Embeddable &lt;b&gt;</li>" in response.content.decode()
    assert "X-Frame-Options" not in response
    policy = directives(one(response, ENFORCED))
    assert policy["frame-ancestors"] == "*"
    site = directives(one(asgi.get("/no-such-page/"), ENFORCED))  # the site's policy, no nonce
    assert {k: v for k, v in policy.items() if k != "frame-ancestors"} == {
        k: v for k, v in site.items() if k != "frame-ancestors"
    }
    assert one(response, "X-Content-Type-Options") == "nosniff"
