"""nginx and the app: connections kept open, the list of app servers, draining (nginx/upstream/app-upstream)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

from harness.stack import Stack, docker
from tests.hosts import registry, views_constant

APP_PORT_HEX = ":1F40"  # 8000, as /proc/net/tcp writes ports
ESTABLISHED, TIME_WAIT = "01", "06"


def connections_to_app(stack: Stack) -> dict[str, int]:
    """nginx's TCP sockets toward the app's port, by state (from nginx's /proc/net/tcp)."""
    table = stack.exec("nginx", "cat", "/proc/net/tcp").stdout.splitlines()[1:]
    states: dict[str, int] = {}
    for row in table:
        fields = row.split()
        if fields[2].endswith(APP_PORT_HEX):  # remote address
            states[fields[3]] = states.get(fields[3], 0) + 1
    return states


def upstream_conf(stack: Stack) -> str:
    return stack.exec("nginx", "cat", "/etc/nginx/conf.d/01-app-upstream.conf").stdout


def upstream_servers(stack: Stack) -> list[str]:
    """The addresses nginx sends requests to now (01-app-upstream.conf; a `down` placeholder is none)."""
    lines = [line.split() for line in upstream_conf(stack).splitlines() if line.strip().startswith("server ")]
    return [fields[1].rsplit(":", 1)[0] for fields in lines if "down;" not in fields]


def app_address(stack: Stack) -> str:
    servers = upstream_servers(stack)
    assert len(servers) == 1, servers
    return servers[0]


def proxied(stack: Stack, since: int = 0) -> list[tuple[float, list[str]]]:
    """Each request nginx passed to the app, from its access log (from character `since` on):
    when it started (Unix time) and the app addresses it tried, in order."""
    requests = []
    for line in stack.logs("nginx")[since:].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # nginx's and app-upstream's own lines
        if isinstance(entry, dict) and entry.get("logger") == "nginx.access" and entry.get("upstream"):
            tried = re.findall(r"([0-9.]+|\[[0-9a-fA-F:]+\]):\d+", entry["upstream"])
            requests.append((entry["unix_time"] - entry["duration_s"], [a.strip("[]") for a in tried]))
    return requests


def test_nginx_reuses_connections_to_the_app(stack: Stack):
    before = connections_to_app(stack)
    for _ in range(200):
        assert stack.get("/now/").status == 200
    after = connections_to_app(stack)
    # 200 requests one after another: a connection each would leave ~200 in
    # TIME_WAIT; kept open, a few stay established and almost none close.
    assert after.get(ESTABLISHED, 0) >= 1, after
    assert after.get(TIME_WAIT, 0) - before.get(TIME_WAIT, 0) < 20, (before, after)


def test_drain_takes_the_app_out_of_nginx_and_undrain_brings_it_back(stack: Stack):
    address = app_address(stack)
    try:
        drained = stack.exec("nginx", "app-upstream", "drain", address)
        # Its only replica drained: from the moment drain returns, nginx sends
        # nothing there (no worker with the old list takes a connection), and says so.
        assert stack.get("/now/").status == 502
        assert f"drained {address}" in drained.stderr
        assert "down;" in upstream_conf(stack)
        # The watcher does not put it back while the drain holds.
        time.sleep(3)
        assert stack.get("/now/").status == 502
    finally:
        stack.exec("nginx", "app-upstream", "undrain", address)
    # Served again from the moment undrain returns.
    assert stack.get("/now/").status == 200
    assert app_address(stack) == address


def test_a_configuration_nginx_refuses_is_reported_and_the_last_one_serves(stack: Stack):
    broken = "/etc/nginx/conf.d/99-broken.conf"
    stack.exec("nginx", "sh", "-c", f"echo 'not_a_directive on;' > {broken}")
    try:
        result = stack.exec("nginx", "nginx-reload", check=False)
        assert result.returncode == 1
        assert "refused the configuration" in result.stderr
        assert 'unknown directive "not_a_directive"' in result.stderr
        assert stack.get("/now/").status == 200
    finally:
        stack.exec("nginx", "rm", "-f", broken)
    assert stack.exec("nginx", "nginx-reload").returncode == 0
    assert stack.get("/now/").status == 200


def test_app_upstream_leaves_nginx_no_process_to_reap(stack: Stack):
    # nginx is the container's pid 1: a process app-upstream leaves behind becomes
    # its child, and nginx logs reaping it. Every round would add a line.
    for _ in range(3):
        stack.exec("nginx", "app-upstream", "render")
    time.sleep(5)  # two rounds of the watcher, at its default interval
    reaped = [line for line in stack.logs("nginx").splitlines() if "unknown process" in line]
    assert not reaped, reaped[-3:]


SHUTDOWN_CONF = "/etc/nginx/main.d/worker-shutdown-timeout.conf"


def nginx_workers(stack: Stack) -> dict[int, str]:
    """nginx's worker processes and their titles ("... is shutting down" once a reload has replaced them)."""
    script = 'for p in /proc/[0-9]*; do printf "%s %s\\n" "${p#/proc/}" "$(tr "\\0" " " < $p/cmdline)"; done'
    rows = stack.exec("nginx", "bash", "-c", script).stdout.splitlines()
    return {int(pid): title.strip() for pid, _, title in (row.partition(" ") for row in rows) if "worker" in title}


def test_a_stream_left_on_an_old_worker_ends_at_the_shutdown_timeout(stack: Stack):
    original = stack.exec("nginx", "cat", SHUTDOWN_CONF).stdout
    stack.exec("nginx", "sh", "-c", f"echo 'worker_shutdown_timeout 3s;' > {SHUTDOWN_CONF}")
    stack.exec("nginx", "nginx-reload")
    try:
        with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as stream:
            stream.sendall(f"GET /books/stream/ HTTP/1.1\r\nHost: localhost:{stack.port}\r\n\r\n".encode())
            assert stream.recv(65536).startswith(b"HTTP/1.1 200")
            with_the_limit = set(nginx_workers(stack))
            stack.exec("nginx", "nginx-reload")
            reloaded = time.monotonic()
            # The stream has no end of its own (a comment every LIVE_KEEPALIVE s): only the limit ends it.
            while stream.recv(65536) and time.monotonic() - reloaded < 30:
                pass
            ended_after = time.monotonic() - reloaded
        assert ended_after < 20, f"the stream was still open {ended_after:.0f} s after the reload"
        # And the workers the reload replaced have exited.
        deadline = time.monotonic() + 10
        while with_the_limit & set(nginx_workers(stack)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not with_the_limit & set(nginx_workers(stack)), nginx_workers(stack)
    finally:
        stack.exec("nginx", "sh", "-c", f'printf "%s" "$1" > {SHUTDOWN_CONF}', "sh", original)
        stack.exec("nginx", "nginx-reload")
    assert stack.get("/now/").status == 200


def nginx_in_a_new_container(stack: Stack, option: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`nginx OPTION` (-t, -T) through the image's entrypoint, in a container of its own with these
    settings on top of the two the site needs."""
    settings = {"NGINX_UPSTREAM": "127.0.0.1:8000", "NGINX_TRUSTED_PROXY": "127.0.0.1", **settings}
    environment = [arg for name, value in settings.items() for arg in ("-e", f"{name}={value}")]
    return docker("run", "--rm", *environment, stack.image("nginx"), "nginx", option, check=False)


def test_the_shutdown_timeout_comes_from_the_environment_and_outlasts_every_response_that_ends(stack: Stack):
    # /events/ lasts MAX_EVENTS seconds at most, a long-poll MAX_WAIT_SECONDS (app/books/views.py).
    assert int(registry()["NGINX_WORKER_SHUTDOWN_TIMEOUT"].default) > max(
        views_constant("MAX_EVENTS"), views_constant("MAX_WAIT_SECONDS")
    )
    given = nginx_in_a_new_container(stack, "-T", NGINX_WORKER_SHUTDOWN_TIMEOUT="7")
    assert given.returncode == 0, given.stderr
    assert "worker_shutdown_timeout  7s;" in given.stdout
    bad = nginx_in_a_new_container(stack, "-t", NGINX_WORKER_SHUTDOWN_TIMEOUT="soon")
    assert bad.returncode != 0
    assert "NGINX_WORKER_SHUTDOWN_TIMEOUT must be a whole number of seconds, not 'soon'" in bad.stderr


def test_app_upstream_refuses_bad_input(stack: Stack):
    for args in (["drain", "not-an-address"], ["drain"], ["undrain", "$(reboot)"], ["sideways"]):
        result = stack.exec("nginx", "app-upstream", *args, check=False)
        assert result.returncode == 2, (args, result)
        assert result.stderr.strip(), args
    assert stack.get("/now/").status == 200


def test_a_bad_setting_stops_nginx_with_a_clear_message(stack: Stack):
    result = nginx_in_a_new_container(stack, "-t", NGINX_UPSTREAM_KEEPALIVE="lots")
    assert result.returncode != 0
    assert "expected a positive whole number, got 'lots'" in result.stderr
