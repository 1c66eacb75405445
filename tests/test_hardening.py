"""Hardening, checked on the running stack: containers, nginx's headers, networks and secrets.

tests/test_safety.py has the rest: a non-root app, only nginx publishing a
port, separate networks, secrets out of image history and logs, and
`check --deploy --fail-level WARNING` on the production settings.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.stack import Stack
from tests.test_routes import admin_login

HARDENED = ("app", "migrate", "secrets")


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


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


# --- nginx's answers ----------------------------------------------------------------------------
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def assert_security_headers(headers: dict[str, str], what: str) -> None:
    assert headers.get("server") == "nginx", f"{what}: server_tokens off shows no version"
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}, once"
    csp = headers.get("content-security-policy", "")
    assert "\n" not in csp, f"{what}: one Content-Security-Policy"
    directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";") if d.strip())
    assert directives.get("default-src") == "'self'" and directives.get("frame-ancestors") == "'none'", csp
    assert directives.get("object-src") == "'none'" and directives.get("base-uri") == "'self'", csp


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),  # a page of the app
        ("/static/admin/css/base.css", 200),  # a static file from nginx
        ("/static/missing.css", 404),  # nginx's own error
        ("/no-such-page/", 404),  # the app's error
    ],
)
def test_security_headers_on_every_answer(stack: Stack, path: str, status: int):
    response = stack.get(path)
    assert response.status == status
    assert_security_headers(response.headers, path)
    assert "strict-transport-security" not in response.headers, "no HSTS over plain HTTP"


def test_security_headers_on_nginx_refusals(stack: Stack):
    too_big = stack.request("POST", "/books/", body=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert too_big.status == 413
    assert_security_headers(too_big.headers, "413")


def test_hsts_only_when_the_trusted_proxy_says_https(stack: Stack):
    # From the host, a forged X-Forwarded-Proto is not believed: no HSTS.
    forged = stack.get("/static/admin/css/base.css", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in forged.headers
    # From the TLS proxy's address (127.0.0.1 by default, NGINX_TRUSTED_PROXY) it is.
    for path in ("/static/admin/css/base.css", "/"):
        out = stack.exec(
            "nginx", "curl", "-sS", "-o", "/dev/null", "-D", "-", "-H", "Host: localhost",
            "-H", "X-Forwarded-Proto: https", f"http://127.0.0.1:8080{path}",
        ).stdout  # fmt: skip
        hsts = re.findall(r"(?im)^strict-transport-security: (.+?)\r?$", out)
        assert len(hsts) == 1 and hsts[0].startswith("max-age=31536000"), out


def test_admin_works_under_the_content_security_policy(stack: Stack):
    """Every admin page loads only same-origin scripts and styles, none inline, as the policy demands."""
    csrf, session = admin_login(stack)
    logged_in = {"Cookie": f"csrftoken={csrf}; sessionid={session}"}
    pages = {"/admin/login/": {}}  # the login page as a visitor sees it; logged in, it redirects
    pages |= {path: logged_in for path in ("/admin/", "/admin/books/book/", "/admin/books/book/add/")}
    pages["/admin/password_change/"] = logged_in
    assets: set[str] = set()
    for path, cookies in pages.items():
        page = stack.get(path, headers=cookies)
        assert page.status == 200, path
        assert_security_headers(page.headers, path)
        html = page.text()
        # Inline code and styles are what default-src 'self' blocks.
        for script in re.findall(r"<script\b([^>]*)>", html):
            assert "src=" in script or 'type="application/json"' in script, f"{path}: inline script {script}"
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
    """Secrets reach the app and Postgres as files: none is in a container's environment or command."""
    values = [
        stack.exec("app", "cat", f"/srv/secrets/{name}").stdout.strip()
        for name in ("django_secret_key", "postgres_password", "api_token")
    ]
    assert all(values)
    for service in ("app", "migrate", "db", "nginx"):
        config = docker("inspect", "--format", "{{json .Config}}", stack.container_id(service)).stdout
        for value in values:
            assert value not in config, f"a secret is in the configuration of {service}"
    # The app cannot change them.
    write = stack.exec("app", "sh", "-c", "echo x > /srv/secrets/api_token", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
