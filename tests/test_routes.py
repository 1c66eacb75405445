"""Every route of the contract, from outside, through nginx on 127.0.0.1.

Each test runs twice: against the blueprint's handler, and against Django's own
(DJANGO_STOCK_HANDLER=true, the documented off switch), which must serve alike.
"""

from __future__ import annotations

import gzip
import json
import re
import secrets

import pytest

from harness.stack import ROOT, Stack


@pytest.fixture(params=["blueprint", "stock"])
def stack(request: pytest.FixtureRequest, stack: Stack, stock_stack: Stack) -> Stack:
    return stack if request.param == "blueprint" else stock_stack


def test_serves_with_the_handler_the_setting_names(stack: Stack, request: pytest.FixtureRequest):
    code = "from config.asgi import application; print(type(application).__module__)"
    module = stack.exec("app", "python", "-c", code).stdout.strip().splitlines()[-1]
    stock = "stock" in request.node.callspec.id
    assert module == ("django.core.handlers.asgi" if stock else "core.handlers")


def test_index_links_the_demos(stack: Stack):
    response = stack.get("/")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for path in ("/now/", "/async/", "/books/", "/sync-wrapped/", "/events/", "/healthz", "/readyz", "/admin/"):
        assert f'href="{path}' in response.text()


def test_now(stack: Stack):
    response = stack.get("/now/")
    assert response.status == 200
    assert re.fullmatch(
        r"<html><body>It is now \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\.</body></html>", response.text()
    )


def test_async_view(stack: Stack):
    response = stack.get("/async/?seconds=0.2")
    assert response.status == 200 and response.text() == "非同期ビューのレスポンス"
    assert stack.get("/async/").status == 200  # the default, one second


@pytest.mark.parametrize("query", ["seconds=-1", "seconds=10.01", "seconds=x", "seconds=nan"])
def test_async_view_rejects(stack: Stack, query: str):
    response = stack.get(f"/async/?{query}")
    assert response.status == 400 and "error" in response.json()


def test_books_write_then_read(stack: Stack):
    title = f"Book {secrets.token_hex(4)}"
    created = stack.post_json("/books/", {"title": title}, token=stack.api_token)
    assert created.status == 201, created.body
    assert created.json()["title"] == title
    listing = stack.get("/books/")
    assert listing.status == 200
    assert listing.headers["content-type"] == "text/plain; charset=utf-8"
    assert title in listing.text().split(",")


def test_books_write_failures(stack: Stack):
    assert stack.post_json("/books/", {"title": "x"}).status == 401
    assert stack.post_json("/books/", {"title": "x"}, token="wrong").status == 401
    assert stack.post_json("/books/", ["x"], token=stack.api_token).status == 400
    assert stack.post_json("/books/", {"title": ""}, token=stack.api_token).status == 400
    assert stack.post_json("/books/", {"title": "x" * 201}, token=stack.api_token).status == 400
    bad = stack.request("POST", "/books/", body=b"{oops", headers={"Authorization": f"Bearer {stack.api_token}"})
    assert bad.status == 400 and bad.json()["error"] == "body must be JSON"
    assert "x" * 201 not in stack.get("/books/").text()


def test_sync_wrapped(stack: Stack):
    response = stack.get("/sync-wrapped/")
    assert response.status == 200
    assert "sync_to_async(sync_only1)()" in response.text()
    assert "@sync_to_async sync_only2()" in response.text()


def test_probes(stack: Stack):
    assert stack.get("/healthz").status == 200
    assert stack.get("/readyz").text() == "ready\n"


def test_unknown_host_is_refused(stack: Stack):
    response = stack.get("/now/", headers={"Host": "evil.example"})
    assert response.status == 400
    assert b"Traceback" not in response.body


def admin_login(stack: Stack) -> tuple[str, str]:
    """Create a superuser with manage.py, then log in over HTTP like a browser."""
    password = stack.create_superuser()
    page = stack.get("/admin/login/")
    csrf_cookie = re.search(r"csrftoken=([^;]+)", page.headers["set-cookie"]).group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text()).group(1)
    body = f"csrfmiddlewaretoken={token}&username=admin&password={password}&next=/admin/".encode()
    login = stack.request(
        "POST", "/admin/login/?next=/admin/", body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf_cookie}",
                 "Origin": f"http://localhost:{stack.port}", "Referer": stack.url("/admin/login/")},
    )  # fmt: skip
    assert login.status == 302, login.text()[:2000]
    session = re.search(r"sessionid=([^;]+)", login.headers["set-cookie"]).group(1)
    return csrf_cookie, session


def test_admin_login_and_books_through_the_proxy(stack: Stack):
    csrf, session = admin_login(stack)
    page = stack.get("/admin/books/book/", headers={"Cookie": f"csrftoken={csrf}; sessionid={session}"})
    assert page.status == 200
    assert "Select book to change" in page.text()


def test_admin_forged_post_is_rejected(stack: Stack):
    page = stack.request(
        "POST", "/admin/login/", body=b"username=admin&password=x",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
    )  # fmt: skip
    assert page.status == 403


def test_admin_static_files_come_from_nginx(stack: Stack):
    page = stack.get("/admin/login/")
    assets = re.findall(r'(?:href|src)="(/static/[^"]+\.(?:css|js))"', page.text())
    assert any(a.endswith(".css") for a in assets) and any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        response = stack.get(asset, headers={"Accept-Encoding": "gzip"})
        assert response.status == 200, asset
        expected = "text/css" if asset.endswith(".css") else "application/javascript"
        assert response.headers["content-type"].startswith(expected)
        assert "immutable" in response.headers["cache-control"]
        if response.headers.get("content-encoding") == "gzip":
            assert gzip.decompress(response.body)
    # nginx answered them all: the app never saw a request for /static/.
    assert "/static/" not in stack.logs("app")


def test_app_alone_serves_static_files(stack: Stack):
    # Without nginx (a container host), the same image serves /static/ itself.
    page = stack.get("/admin/login/")
    css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text()).group(1)
    code = (
        "import urllib.request\n"
        f"r = urllib.request.urlopen('http://127.0.0.1:8000{css}')\n"
        "print(r.status, r.headers['Content-Type'], r.headers['Cache-Control'])\n"
    )
    out = stack.exec("app", "python", "-c", code).stdout
    assert out.startswith("200 text/css") and "immutable" in out, out


def test_settings_the_dockerfile_and_nginx_name_one_static_root():
    """The rule check core.E004 states: collectstatic writes STATIC_ROOT, both images copy it, nginx serves it."""
    settings = (ROOT / "app" / "config" / "settings.py").read_text()
    url = re.search(r'^STATIC_URL = "([^"]+)"$', settings, re.M).group(1)
    root = re.search(r'^STATIC_ROOT = env\("DJANGO_STATIC_ROOT", default="([^"]+)"\)$', settings, re.M).group(1)
    stages = re.split(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M)
    copies = {
        stage: re.findall(r"^COPY --from=build (\S+) (\S+)$", body, re.M)
        for stage, body in zip(stages[1::2], stages[2::2], strict=True)
    }
    for stage in ("app", "nginx"):
        assert (root, root) in copies[stage], f"the Dockerfile's {stage} stage copies no {root}: {copies[stage]}"
    static = [(src, dst) for pairs in copies.values() for src, dst in pairs if "static" in src + dst]
    assert set(static) == {(root, root)}, static
    site = (ROOT / "nginx" / "site" / "app.conf").read_text()
    location = re.search(rf"^location {re.escape(url)} \{{(.*?)^\}}", site, re.M | re.S)
    assert location, f"nginx/site/app.conf has no location {url}"
    assert re.search(rf"^\s*alias\s+{re.escape(root)}/;$", location.group(1), re.M), location.group(0)


def test_client_cannot_spoof_forwarded_headers(stack: Stack):
    seen = len(stack.logs("app"))
    marker = secrets.token_hex(4)
    response = stack.get(f"/now/?{marker}", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert response.status == 200
    line = next(line for line in stack.logs("app")[seen:].splitlines() if marker in line)
    # The access line names the client nginx saw (the edge network's gateway), not the forged one.
    entry = json.loads(line)
    assert "6.6.6.6" not in line and entry["client"].startswith(stack.edge_subnet.rsplit(".", 1)[0] + "."), line
