"""Hardening, checked on the running stack: containers, security headers, networks and secrets.

tests/test_safety.py has the rest: a non-root app, only nginx publishing a
port, separate networks, secrets out of image history and logs, and
`check --deploy --fail-level WARNING` on the production settings.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from harness.stack import Stack, docker
from tests.test_routes import admin_login

HARDENED = ("app", "migrate", "worker", "secrets")


def host_config(stack: Stack, service: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .HostConfig}}", stack.container_id(service)).stdout)


# --- The containers of the app image ------------------------------------------------------------
@pytest.mark.parametrize("service", HARDENED)
def test_app_image_containers_are_locked_down(stack: Stack, service: str):
    config = host_config(stack, service)
    assert config["ReadonlyRootfs"] is True
    assert config["CapDrop"] == ["ALL"] and not config["CapAdd"]
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert 0 < config["PidsLimit"] <= 4096
    nofile = {u["Name"]: (u["Soft"], u["Hard"]) for u in config["Ulimits"]}["nofile"]
    assert nofile == (16384, 16384)
    assert set(config["Tmpfs"]) == {"/tmp"}


def test_app_has_a_memory_limit_and_no_swap(stack: Stack):
    config = host_config(stack, "app")
    assert config["Memory"] > 0 and config["MemorySwap"] == config["Memory"]


def test_limits_hold_inside_the_app(stack: Stack):
    code = (
        "import os, pathlib, resource\n"
        "status = dict(line.split(':', 1) for line in pathlib.Path('/proc/1/status').read_text().splitlines())\n"
        "print('CapEff', status['CapEff'].strip())\n"
        "print('NoNewPrivs', status['NoNewPrivs'].strip())\n"
        "print('nofile', *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "for f in ('/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/pids/pids.max'):\n"
        "    if os.path.exists(f):\n"
        "        print('pids', pathlib.Path(f).read_text().strip())\n"
        "for path in ('/srv/app/written', '/opt/venv/written', '/srv/secrets/written', '/tmp/written'):\n"
        "    try:\n"
        "        pathlib.Path(path).write_text('x')\n"
        "        print('writable', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.strerror)\n"
    )
    lines = stack.exec("app", "python", "-c", code).stdout.splitlines()
    out = dict(line.split(" ", 1) for line in lines if not line.startswith("refused"))
    assert out["CapEff"] == "0000000000000000"
    assert out["NoNewPrivs"] == "1"
    assert out["nofile"] == "16384 16384"
    assert out["pids"] == "4096"
    assert out["writable"] == "/tmp/written"  # the tmpfs, and nothing else
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 3 and all("Read-only file system" in line for line in refused), refused


def test_nginx_runs_with_few_capabilities(stack: Stack):
    config = host_config(stack, "nginx")
    added = sorted(cap.removeprefix("CAP_") for cap in config["CapAdd"])
    assert config["CapDrop"] == ["ALL"] and added == ["CHOWN", "SETGID", "SETUID"]
    assert "no-new-privileges:true" in config["SecurityOpt"]
    # A connection to gunicorn per request: ports in TIME_WAIT are reused.
    sysctls = stack.exec("nginx", "cat", "/proc/sys/net/ipv4/tcp_tw_reuse", "/proc/sys/net/ipv4/ip_local_port_range")
    assert sysctls.stdout.split() == ["1", "10240", "65535"]
    # Its workers run as the unprivileged nginx user.
    users = stack.exec("nginx", "sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status | sort | uniq -c").stdout
    assert re.search(r"\bUid:\s+101\s+101\s+101\s+101\b", users), users


# --- Security headers ----------------------------------------------------------------------------
# Pages carry the app's own (Django's settings, relaxed by a view for itself);
# nginx adds its fixed set only to what it answers itself (static files, its
# refusals and errors). Every header appears at most once. Requests come from
# inside the nginx container: 127.0.0.1 is the trusted proxy (NGINX_TRUSTED_PROXY),
# so X-Forwarded-Proto and -For are believed, as from a TLS proxy.
NGINX_POLICY = "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
NGINX_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "content-security-policy": NGINX_POLICY,
}
ONCE = (
    *NGINX_HEADERS,
    "content-security-policy-report-only",
    "strict-transport-security",
    "x-request-id",
    "cache-control",
    "server",
)
HSTS_VARIABLES = (
    "SITE_DOMAINS",
    "DJANGO_HTTPS",
    "DJANGO_HSTS_SECONDS",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_HSTS_PRELOAD",
)


@dataclass
class Answer:
    """One response as sent: every header line, in order (names in lower case), and the body."""

    status: int
    headers: list[tuple[str, str]]
    body: str

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name} {len(values)} times: {values}"
        return values[0] if values else None

    def one(self, name: str) -> str:
        value = self.get(name)
        assert value is not None, f"no {name}: {self.headers}"
        return value

    def check_once(self) -> None:
        for name in ONCE:
            self.get(name)


def answer(stack: Stack, path: str, *, proto: str = "http", method: str = "GET", client: str = "198.51.100.20",
           body_bytes: int = 0, repeat: int = 1) -> Answer:  # fmt: skip
    """A request to nginx from the trusted proxy's address, saying the scheme was `proto`; the last of `repeat`."""
    curl = ["curl", "-sS", "-i", "--path-as-is", "--max-time", "30", "-X", method, "-H", "Host: localhost",
            "-H", f"X-Forwarded-Proto: {proto}", "-H", f"X-Forwarded-For: {client}"]  # fmt: skip
    if body_bytes:
        curl += ["-H", "Content-Type: application/json", "--data-binary", "@/tmp/body"]
    request = shlex.join([*curl, f"http://127.0.0.1:8080{path}"])
    script = f"head -c {body_bytes} /dev/zero > /tmp/body; for i in $(seq {repeat}); do {request} > /tmp/answer; done"
    result = stack.exec("nginx", "sh", "-c", f"{script}; cat /tmp/answer", check=False)
    out = result.stdout.replace("\r\n", "\n")  # as text, lines end in \n either way
    assert out.startswith("HTTP/"), (path, result.stderr)
    while True:  # a 100 Continue before the answer, if any
        head, _, out = out.partition("\n\n")
        status_line, *lines = head.split("\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return Answer(status, headers, out)


def directives(policy: str) -> dict[str, str]:
    return dict(d.strip().partition(" ")[::2] for d in policy.split(";") if d.strip())


def page_nonce(html: str) -> str:
    (nonce,) = re.findall(r'<script nonce="([^"]+)">', html)
    return nonce


def assert_nginx_headers(response: Answer, what: str) -> None:
    """nginx's own set, exactly, once each."""
    response.check_once()
    assert response.get("server") == "nginx", f"{what}: server_tokens off shows no version"
    for name, value in NGINX_HEADERS.items():
        assert response.get(name) == value, f"{what}: {name}"
    assert re.fullmatch(r"[0-9a-f]{32}", response.one("x-request-id")), what


def assert_page_headers(response: Answer, what: str, policy_header: str = "content-security-policy") -> dict:
    """The app's headers, once each, with the app's policy (a script-src of its own, unlike nginx's); its directives."""
    response.check_once()
    assert response.get("x-content-type-options") == "nosniff", what
    assert response.get("referrer-policy") == "same-origin", what
    assert re.fullmatch(r"[0-9a-f]{32}", response.one("x-request-id")), what
    policy = directives(response.one(policy_header))
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'", what
    assert policy["base-uri"] == "'self'" and policy["form-action"] == "'self'", what
    assert policy["script-src"].startswith("'self'"), f"{what}: not the app's policy: {policy}"
    return policy


def nginx_errors(stack: Stack, proto: str, client: str) -> dict[str, Answer]:
    """nginx's own refusals: a path with "..", one above the root, a body over 1 MiB, login attempts over the limit."""
    errors = {
        "400": answer(stack, "/books/../admin/", proto=proto),
        "400 (above the root)": answer(stack, "/static/../../../../etc/passwd", proto=proto),
        "413": answer(stack, "/books/", method="POST", body_bytes=2 << 20, proto=proto),
    }
    # Burst 5 at 10 a minute, from an address of the test's own: the last of 12 at once is refused.
    errors["429"] = answer(stack, "/admin/login/", method="POST", client=client, proto=proto, repeat=12)
    for what, response in errors.items():
        code = what.split()[0]
        assert response.status == int(code), (what, response.status, response.body[:300])
        if code in ("413", "429"):  # in a proxied location: answered by @nginx_error
            assert response.get("content-type") == "text/plain" and response.body.startswith(code), response.body
    return errors


def test_pages_carry_the_apps_headers(stack: Stack):
    page = answer(stack, "/")
    assert page.status == 200
    policy = assert_page_headers(page, "/")
    assert page.one("x-frame-options") == "DENY" and policy["frame-ancestors"] == "'none'"
    # Its inline script runs: the nonce in the header is the page's, and new on every request.
    nonce = page_nonce(page.body)
    assert policy["script-src"] == f"'self' 'nonce-{nonce}'"
    assert page_nonce(answer(stack, "/").body) != nonce
    assert page.get("content-security-policy-report-only") is None
    # The app's error pages too, and the admin's (the login page, and its 403 on a forged POST).
    for path, method, status in [("/no-such-page/", "GET", 404), ("/admin/login/", "GET", 200),
                                 ("/admin/login/", "POST", 403)]:  # fmt: skip
        response = answer(stack, path, method=method, client="198.51.100.21")
        assert response.status == status, path
        assert response.one("x-frame-options") == "DENY", path
        assert assert_page_headers(response, path)["frame-ancestors"] == "'none'", path


def test_a_view_relaxes_its_own_headers(stack: Stack):
    """@xframe_options_exempt and @csp_override on /books/embed/ reach the browser: nginx adds nothing back."""
    embed = answer(stack, "/books/embed/")
    assert embed.status == 200 and "<ul>" in embed.body
    assert embed.get("x-frame-options") is None
    policy = assert_page_headers(embed, "/books/embed/")
    assert policy["frame-ancestors"] == "*"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/static/admin/css/base.css", 200), ("/static/missing.css", 404), ("/static/admin/", 403)],
)
def test_static_files_carry_nginxs_headers(stack: Stack, path: str, status: int):
    response = answer(stack, path)
    assert response.status == status
    assert_nginx_headers(response, path)
    assert (response.get("cache-control") is not None) == (status == 200)


def test_nginxs_own_errors_carry_its_headers(stack: Stack):
    for what, response in nginx_errors(stack, "http", client="198.51.100.22").items():
        assert_nginx_headers(response, what)


def test_no_hsts_by_default_even_over_https(stack: Stack):
    # Without DJANGO_HTTPS, DJANGO_HSTS_SECONDS defaults to 0: the app sends no
    # HSTS, and nginx, reading the same variables, none either.
    for path in ("/", "/static/admin/css/base.css", "/books/../admin/"):
        assert answer(stack, path, proto="https").get("strict-transport-security") is None, path
    # From anyone but the trusted proxy, X-Forwarded-Proto is not believed.
    forged = stack.get("/static/admin/css/base.css", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in forged.headers


@pytest.fixture(scope="module")
def https_stack(stack: Stack) -> Iterator[Callable[[dict[str, str]], Stack]]:
    """A second stack behind a TLS proxy (DJANGO_HTTPS=true), started on first use, set as each test asks."""
    started: list[Stack] = []

    def configured(env: dict[str, str]) -> Stack:
        env = {"DJANGO_HTTPS": "true", **env}
        if not started:
            started.append(stack.sibling("headers", 96, env))
            started[0].compose("down", "--volumes", "--remove-orphans", check=False, with_tests=True)
        started[0].write_env(env)
        started[0].up()  # recreates what the new settings change, starts what was stopped
        return started[0]

    try:
        yield configured
    finally:
        for each in started:
            each.down()


def test_hsts_is_the_apps_on_every_answer(https_stack: Callable[[dict[str, str]], Stack]):
    """The app's HSTS, once, on pages; the same value on nginx's static files and errors. And report-only CSP."""
    settings = {"DJANGO_HSTS_PRELOAD": "true", "DJANGO_CSP_REPORT_ONLY": "true"}
    settings["DJANGO_CSP_REPORT_URI"] = "https://reports.example.com/csp"
    sibling = https_stack(settings)
    page = answer(sibling, "/", proto="https")
    assert page.status == 200
    hsts = page.one("strict-transport-security")
    assert hsts == "max-age=31536000; includeSubDomains; preload"  # DJANGO_HTTPS's defaults, and the preload asked for
    # Report-only: the policy, its nonce and where reports go, and no enforced policy.
    assert page.get("content-security-policy") is None
    policy = assert_page_headers(page, "/", "content-security-policy-report-only")
    assert policy["script-src"] == f"'self' 'nonce-{page_nonce(page.body)}'"
    assert policy["report-uri"] == "https://reports.example.com/csp"
    assert answer(sibling, "/books/embed/", proto="https").one("strict-transport-security") == hsts
    static = answer(sibling, "/static/admin/css/base.css", proto="https")
    assert static.status == 200 and static.one("strict-transport-security") == hsts
    assert_nginx_headers(static, "static file")  # nginx's own policy, enforced, whatever the app's mode
    for what, response in nginx_errors(sibling, "https", client="198.51.100.23").items():
        assert_nginx_headers(response, what)
        # A request line refused before its headers are read: nginx cannot know what the proxy said.
        expected = None if what == "400 (above the root)" else hsts
        assert response.get("strict-transport-security") == expected, what
    # Over plain http no HSTS: the app redirects to https, nginx serves the file without it.
    plain = answer(sibling, "/", proto="http")
    assert plain.status == 301 and plain.get("strict-transport-security") is None
    assert answer(sibling, "/static/admin/css/base.css").get("strict-transport-security") is None
    # The app unreachable: nginx's own 502 (or 504), with its headers and the same HSTS.
    sibling.compose("stop", "app")
    down = answer(sibling, "/", proto="https")
    assert down.status in (502, 504) and down.body.startswith(str(down.status)), (down.status, down.body)
    assert_nginx_headers(down, "app down")
    assert down.one("strict-transport-security") == hsts


def test_no_hsts_when_the_app_sends_none(https_stack: Callable[[dict[str, str]], Stack]):
    """DJANGO_HSTS_SECONDS=0 behind a TLS proxy that says https: no HSTS on any answer."""
    sibling = https_stack({"DJANGO_HSTS_SECONDS": "0"})
    page = answer(sibling, "/", proto="https")
    assert page.status == 200 and page.get("strict-transport-security") is None
    assert page.get("content-security-policy") is not None  # enforced again: DJANGO_CSP_REPORT_ONLY unset
    static = answer(sibling, "/static/admin/css/base.css", proto="https")
    assert static.status == 200 and static.get("strict-transport-security") is None
    refused = answer(sibling, "/books/../admin/", proto="https")
    assert refused.status == 400 and refused.get("strict-transport-security") is None


HSTS_CASES = [
    {},
    {"DJANGO_HTTPS": "true"},
    {"DJANGO_HTTPS": "1", "DJANGO_HSTS_PRELOAD": "yes"},
    {"DJANGO_HTTPS": "true", "DJANGO_HSTS_SECONDS": "0"},
    {"DJANGO_HTTPS": "true", "DJANGO_HSTS_INCLUDE_SUBDOMAINS": ""},
    {"DJANGO_HTTPS": "off", "DJANGO_HSTS_SECONDS": "600"},
    {"DJANGO_HSTS_SECONDS": " 0600 ", "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "On", "DJANGO_HSTS_PRELOAD": "2"},
    # The site's names make HTTPS the default (deploy/compose/https.yml); an empty list does not.
    {"SITE_DOMAINS": "example.com,www.example.com"},
    {"SITE_DOMAINS": " , "},
    {"SITE_DOMAINS": "example.com", "DJANGO_HTTPS": "false"},
    {"DJANGO_HTTPS": "TRUE", "DJANGO_HSTS_SECONDS": "abc"},
]


# Django's header for a request over https, in a process of its own per case (settings load once).
HSTS_PROBE = """\
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware
from django.test import RequestFactory
request = RequestFactory().get("/", secure=True)
print(SecurityMiddleware(HttpResponse).process_response(request, HttpResponse()).get("Strict-Transport-Security", ""))
"""
HSTS_RUNNER = """\
import json, os, subprocess, sys
cases, names, probe = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
for case in cases:
    env = {k: v for k, v in os.environ.items() if k not in names} | case
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    print(run.stdout.strip() if run.returncode == 0 else "refused")
"""


def test_nginx_computes_the_hsts_django_sends(stack: Stack):
    """nginx's start script and Django's SecurityMiddleware, given the same variables, give the same header."""
    django = docker(
        "run", "--rm", "--entrypoint", "python", stack.image("app"), "-c", HSTS_RUNNER,
        json.dumps(HSTS_CASES), json.dumps(HSTS_VARIABLES), HSTS_PROBE,
    ).stdout.splitlines()  # fmt: skip
    # What the start script writes into nginx's config: `default  "<value>";`
    written = r"""sed -n 's/^ *default *"\(.*\)";$/\1/p' /etc/nginx/conf.d/00-strict-transport-security.conf"""
    script = "".join(
        f"env -i PATH=/usr/bin:/bin {shlex.join([f'{k}={v}' for k, v in case.items()])} "
        f"/docker-entrypoint.d/19-strict-transport-security.sh >/dev/null 2>&1 && {written} || echo refused\n"
        for case in HSTS_CASES
    )
    nginx = docker("run", "--rm", "--entrypoint", "sh", stack.image("nginx"), "-c", script).stdout.splitlines()
    assert django[:3] == ["", "max-age=31536000; includeSubDomains", "max-age=31536000; includeSubDomains; preload"]
    assert django[-1] == "refused", django
    differ = [(case, d, n) for case, d, n in zip(HSTS_CASES, django, nginx, strict=True) if d != n]
    assert differ == [], differ


def test_admin_works_under_the_content_security_policy(stack: Stack):
    """Every admin page loads only same-origin scripts and styles; an inline script only with the page's nonce."""
    csrf, session = admin_login(stack)
    logged_in = {"Cookie": f"csrftoken={csrf}; sessionid={session}"}
    pages = {"/admin/login/": {}}  # the login page as a visitor sees it; logged in, it redirects
    pages |= {path: logged_in for path in ("/admin/", "/admin/books/book/", "/admin/books/book/add/")}
    pages["/admin/password_change/"] = logged_in
    assets: set[str] = set()
    for path, cookies in pages.items():
        page = stack.get(path, headers=cookies)
        assert page.status == 200, path
        assert page.headers["x-frame-options"] == "DENY", path
        policy = page.headers["content-security-policy"]
        assert "\n" not in policy, f"{path}: one Content-Security-Policy"
        script_src = directives(policy)["script-src"].split()
        html = page.text()
        # Inline code and styles are what the policy blocks, unless a script carries the nonce.
        for script in re.findall(r"<script\b([^>]*)>", html):
            nonce = re.search(r'nonce="([^"]+)"', script)
            allowed = "src=" in script or 'type="application/json"' in script
            assert allowed or (nonce and f"'nonce-{nonce.group(1)}'" in script_src), f"{path}: inline {script}"
        assert not re.search(r"<style\b", html), f"{path}: inline <style>"
        assert not re.search(r"\sstyle=\"", html), f"{path}: a style attribute"
        assert not re.search(r"\son[a-z]+=\"", html), f"{path}: an inline event handler"
        assert "javascript:" not in html, path
        for url in re.findall(r'(?:src|href)="([^"#]+)"', html):
            assert not url.startswith(("http:", "https:", "//")), f"{path}: {url} is not same-origin"
            if url.startswith("/static/"):
                assets.add(url)
        for action in re.findall(r'<form\b[^>]*action="([^"]*)"', html):
            assert not action.startswith(("http:", "https:", "//")), f"{path}: form-action {action}"
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert stack.get(asset).status == 200, asset


# --- Networks and secrets ---------------------------------------------------------------------
def test_nginx_cannot_reach_the_database(stack: Stack):
    db = json.loads(
        docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", stack.container_id("db")).stdout
    )
    addresses = [network["IPAddress"] for network in db.values()]
    assert addresses
    # Control: the app reaches it.
    probe = "import socket; socket.create_connection(('db', 5432), timeout=3).close(); print('reached')"
    assert stack.exec("app", "python", "-c", probe).stdout.strip() == "reached"
    # nginx can neither resolve its name nor connect to its address.
    for target in ["db", *addresses]:
        result = stack.exec("nginx", "curl", "-sS", "--max-time", "3", f"http://{target}:5432/", check=False)
        # 6: no such host; 7: no route or refused; 28: timed out. 52 would mean connected.
        assert result.returncode in (6, 7, 28), (target, result.returncode, result.stderr)


def test_no_secret_in_the_containers_configuration(stack: Stack):
    """Secrets reach the app and Postgres as files: no container's `docker inspect`, exited ones included, shows one."""
    values = [
        stack.exec("app", "cat", f"/srv/secrets/{name}").stdout.strip()
        for name in ("django_secret_key", "postgres_password", "api_token")
    ]
    assert all(values) and values[2] == stack.api_token
    containers = stack.compose("ps", "--all", "--quiet").stdout.split()
    services = {docker("inspect", "--format", '{{index .Config.Labels "com.docker.compose.service"}}', c).stdout.strip()
                for c in containers}  # fmt: skip
    assert {"secrets", "db", "migrate", "app", "nginx"} <= services, services
    for container in containers:
        inspected = docker("inspect", container).stdout
        for value in values:
            assert value not in inspected, f"a secret is in `docker inspect` of {container}"
    # The app cannot change them.
    write = stack.exec("app", "sh", "-c", "echo x > /srv/secrets/api_token", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
