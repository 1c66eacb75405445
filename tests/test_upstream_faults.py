"""nginx's list of app servers under faults (nginx/upstream/app-upstream), through nginx on 127.0.0.1.

On the session's stack, each while a bounded load runs where it matters: DNS
failing for 30 s, an app container that accepts connections and never
answers, one that stops answering /healthz and comes back, and the watcher
killed. Each case puts back what it changed. The rollout whose requests never
reach a booting replica is test_redeploy_one_replica_at_a_time_loses_no_request
(tests/test_faults.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.stack import Stack, docker
from tests import load
from tests.test_faults import wait_for
from tests.test_upstream import proxied, upstream_servers

DNS_OUTAGE_SECONDS = 30
# Well below proxy_read_timeout (30 s), which is what a request sent to a
# replica that never answers would wait.
NO_REQUEST_LONGER_THAN = 10.0

# A stand-in app replica: listens on 8000 and either holds every connection
# without a byte of answer ("hang"), or answers every request 200, 503 after
# SIGUSR1, 200 again after the next ("ok"). Exits by itself after `lifetime` s.
FAKE_APP = """
import signal, socket, sys, time
mode, lifetime = sys.argv[1], float(sys.argv[2])
status = [200]
signal.signal(signal.SIGUSR1, lambda *_: status.__setitem__(0, 503 if status[0] == 200 else 200))
server = socket.create_server(("0.0.0.0", 8000), backlog=128)
server.settimeout(0.5)
held, deadline = [], time.monotonic() + lifetime
print("listening", flush=True)
while time.monotonic() < deadline:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    if mode == "hang":
        held.append(conn)
        continue
    try:
        conn.settimeout(2)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 %d X\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n" % status[0])
    except OSError:
        pass
    conn.close()
"""


def resolved(stack: Stack) -> set[str]:
    """The app's addresses as nginx's container resolves its name now."""
    out = stack.exec("nginx", "getent", "ahosts", "app", check=False).stdout
    return {line.split()[0] for line in out.splitlines()}


@contextmanager
def fake_app(stack: Stack, mode: str, lifetime: int = 120) -> Iterator[tuple[str, str]]:
    """A stand-in replica on the stack's edge network under the app's name; yields (container, address)."""
    name = f"{stack.project}-fake-app"
    docker("rm", "--force", name, check=False)
    docker(
        "run", "--detach", "--rm", "--name", name, "--network", f"{stack.project}_edge", "--network-alias", "app",
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--pids-limit", "16", "--memory", "128m",
        stack.image("app"), "python", "-c", FAKE_APP, mode, str(lifetime),
    )  # fmt: skip
    try:
        address = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
        address = address.stdout.strip()
        wait_for("it listens", lambda: "listening" in docker("logs", name).stdout, 30)
        wait_for("nginx's container finds it under the app's name", lambda: address in resolved(stack), 15)
        yield name, address
    finally:
        docker("rm", "--force", name, check=False)
        wait_for("it is out of DNS", lambda: address not in resolved(stack), 15)


def watching(stack: Stack, seconds: float, every: float = 0.5) -> list[list[str]]:
    """nginx's servers, read every `every` s for `seconds` s."""
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(upstream_servers(stack))
        time.sleep(every)
    return seen


def assert_none_failed(results: list[load.Result]) -> None:
    failed = [f"{r.describe()}: {r.body[:200]!r}" for r in results if r.status not in (200, 201)]
    assert not failed, failed[:20]
    slow = [r.describe() for r in results if r.elapsed > NO_REQUEST_LONGER_THAN]
    assert not slow, slow


def mixed(stack: Stack, prefix: str) -> list:
    return [load.get("/now/"), load.post_book(stack.api_token, prefix), load.get("/books/")]


# --- DNS failing for 30 s ---------------------------------------------------------------------
def test_a_failing_resolver_keeps_the_servers(stack: Stack):
    servers = upstream_servers(stack)
    assert servers
    resolv_conf = stack.exec("nginx", "cat", "/etc/resolv.conf").stdout
    seen = len(stack.logs("nginx"))
    try:
        # Nothing listens on port 53 on nginx's loopback: every lookup is refused at once.
        stack.exec("nginx", "sh", "-c", "echo 'nameserver 127.0.0.1' > /etc/resolv.conf")
        assert not resolved(stack), "the name no longer resolves"
        with load.Load(stack.port, mixed(stack, "dns"), threads=4, pause=0.05, max_seconds=60) as traffic:
            during = watching(stack, DNS_OUTAGE_SECONDS, every=1)
        results = traffic.results
    finally:
        stack.exec("nginx", "sh", "-c", 'printf "%s" "$0" > /etc/resolv.conf', resolv_conf)
    print(f"{len(results)} requests while DNS failed for {DNS_OUTAGE_SECONDS} s")
    assert len(results) > 100, "the load ran through the outage"
    assert_none_failed(results)
    assert all(each == servers for each in during), during

    wait_for("app-upstream sees the name again", lambda: "app resolves again" in stack.logs("nginx")[seen:], 20)
    logs = stack.logs("nginx")[seen:]
    # Said once, not every round.
    assert logs.count("looking up app failed (") == 1, logs[-3000:]
    assert f"keeping its last known addresses: {' '.join(servers)}" in logs
    assert upstream_servers(stack) == servers
    assert stack.get("/now/").status == 200


# --- A replica that starts but never gets healthy ------------------------------------------------
def test_a_replica_that_never_answers_gets_no_request(stack: Stack):
    servers = upstream_servers(stack)
    seen = len(stack.logs("nginx"))
    with fake_app(stack, "hang") as (_, address):
        with load.Load(stack.port, mixed(stack, "hang"), threads=4, pause=0.05, max_seconds=60) as traffic:
            during = watching(stack, 18)
        results = traffic.results
        logs = stack.logs("nginx")[seen:]
    print(f"{len(results)} requests while {address} was in DNS and never answered")

    assert len(results) > 50, "the load ran"
    assert_none_failed(results)
    assert all(each == servers for each in during), during
    assert f"{address} is in DNS but does not answer /healthz yet; not adding it" in logs
    assert not [tried for _, tried in proxied(stack, seen) if address in tried]
    assert upstream_servers(stack) == servers


# --- A replica that stops answering /healthz, and answers again ------------------------------------
def test_a_replica_that_stops_answering_is_taken_out_and_comes_back(stack: Stack):
    servers = upstream_servers(stack)
    seen = len(stack.logs("nginx"))
    with fake_app(stack, "ok") as (name, address):
        wait_for("it joins once it answers /healthz", lambda: address in upstream_servers(stack), 20)
        docker("kill", "--signal", "USR1", name)  # now 503
        wait_for("it is taken out", lambda: address not in upstream_servers(stack), 30)
        logs = stack.logs("nginx")[seen:]
        assert upstream_servers(stack) == servers, "the real app stays"
        docker("kill", "--signal", "USR1", name)  # 200 again
        wait_for("it comes back", lambda: address in upstream_servers(stack), 20)
    wait_for("it leaves with its container", lambda: upstream_servers(stack) == servers, 15)

    # One failed probe does not take a server out: three in a row do.
    first_failure = logs.index(f"{address} did not answer /healthz (it is taken out after 3 in a row)")
    assert logs.index(f"{address} failed 3 probes in a row: taking it out") > first_failure
    assert stack.get("/now/").status == 200


# --- The watcher dies ---------------------------------------------------------------------------------
def healthcheck(stack: Stack) -> int:
    return stack.exec("nginx", "nginx-healthcheck", check=False).returncode


def send_signal(stack: Stack, name: str, pid: int) -> None:
    stack.exec("nginx", "bash", "-c", f'kill -{name} "$0"', str(pid))


def test_a_dead_watcher_fails_the_healthcheck_and_is_restarted(stack: Stack):
    assert healthcheck(stack) == 0
    watcher = int(stack.exec("nginx", "cat", "/run/app-upstream/watch.pid").stdout)
    supervisor = int(stack.exec("nginx", "awk", "/^PPid:/ { print $2 }", f"/proc/{watcher}/status").stdout)
    seen = len(stack.logs("nginx"))
    try:
        # The loop that restarts it held still: the watcher stays dead.
        send_signal(stack, "STOP", supervisor)
        send_signal(stack, "KILL", watcher)
        killed = time.monotonic()
        assert healthcheck(stack) == 0, "a fresh heartbeat is enough for a few rounds"
        failing = wait_for("the healthcheck fails", lambda: healthcheck(stack) != 0, 60, interval=1)
        print(f"healthcheck failed {failing - killed:.1f} s after the watcher died")
        result = stack.exec("nginx", "nginx-healthcheck", check=False)
        assert "app-upstream watch last finished a round" in result.stdout, result
    finally:
        send_signal(stack, "CONT", supervisor)

    def restarted() -> bool:
        pid = stack.exec("nginx", "cat", "/run/app-upstream/watch.pid").stdout.strip()
        return pid not in ("", str(watcher)) and healthcheck(stack) == 0

    wait_for("a new watcher runs and the healthcheck passes", restarted, 20, interval=1)
    assert "app-upstream: the watcher exited (status 137); starting it again" in stack.logs("nginx")[seen:]
    assert upstream_servers(stack) and stack.get("/now/").status == 200
