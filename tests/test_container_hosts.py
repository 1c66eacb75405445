"""The app image run as each host runs it, against the test stack's Postgres, with no nginx.

For each target (tests/hosts.py reads it from deploy/): the host's settings and
secrets (the database ones pointed at a fresh database of the stack's
Postgres), its user, read-only root and writable mounts, capabilities and
port; its migration command, twice; its probes or health check; then its stop
signal with a request in flight, which must finish before the host's kill.
Every container started here is removed at the end, and so is the database.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pytest

from harness.stack import Response, Stack, docker, http_request
from tests.hosts import Target, Workload, registry, target

RUN_TARGETS = ["kubernetes-production", "cloud-run", "fly", "render", "ecs"]
SLOW_REQUEST_SECONDS = 3


@dataclass
class Running:
    """One target's web container, up and ready, and what happened before it started."""

    target: Target
    container: str
    port: int  # on 127.0.0.1
    host: str  # a name from its DJANGO_ALLOWED_HOSTS
    https: bool  # whether the host's proxy says X-Forwarded-Proto: https
    token: str
    migrations: list[str]  # the output of each run of the migration command
    gate: dict[str, Any] | None = None  # Kubernetes: what the init container did

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> Response:
        # What the host's proxy adds: the public host name, the scheme, the client.
        sent = {"Host": self.host, "X-Forwarded-For": "203.0.113.7"}
        if self.https:
            sent["X-Forwarded-Proto"] = "https"
        return http_request(self.port, method, path, body=body, headers={**sent, **(headers or {})}, timeout=timeout)


class Runner:
    """Starts containers from the app image the way a target describes them."""

    def __init__(self, stack: Stack, database: str, label: str) -> None:
        self.stack, self.database, self.label = stack, database, label
        self.data_network, self.edge_network = f"{stack.project}_data", f"{stack.project}_edge"
        self.image = stack.image("app")
        self.secrets_volume = f"{stack.project}_secrets"
        self.values = {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "POSTGRES_PASSWORD": stack.exec("app", "cat", "/srv/secrets/postgres_password").stdout.strip(),
            "API_TOKEN": stack.api_token,
        }
        self.user = stack.exec("db", "printenv", "POSTGRES_USER").stdout.strip()

    def args(self, workload: Workload) -> list[str]:
        env = {**workload.env, **workload.host_env}
        # The database the manifest names is replaced by the stack's, in a database of its own.
        env.update(POSTGRES_HOST="db", POSTGRES_PORT="5432", POSTGRES_DB=self.database, POSTGRES_USER=self.user)
        env.update(POSTGRES_SSLMODE="prefer")
        env.update({name: self.values[name] for name in workload.secrets})
        if "POSTGRES_PASSWORD" in workload.host_env:  # given by the host's own database (Render)
            env["POSTGRES_PASSWORD"] = self.values["POSTGRES_PASSWORD"]
        env.update(workload.secret_files)
        args = ["--label", self.label]
        for name, value in env.items():
            args += ["-e", f"{name}={value}"]
        # Secret files: the stack's secrets volume holds files of the same names.
        directories = {str(PurePosixPath(path).parent) for path in workload.secret_files.values()}
        assert len(directories) <= 1, directories
        for directory in directories:
            args += ["--mount", f"type=volume,src={self.secrets_volume},dst={directory},readonly"]
        if workload.read_only:
            args.append("--read-only")
        for path in workload.tmpfs:
            args += ["--tmpfs", path]
        if workload.user:
            args += ["--user", workload.user]
        if workload.drop_all_capabilities:
            args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        return args

    def run(self, workload: Workload) -> subprocess.CompletedProcess[str]:
        """A one-off container on the database's network, to its end."""
        command = workload.command or []
        return docker("run", "--rm", "--network", self.data_network, *self.args(workload), self.image, *command)

    def start(self, name: str, workload: Workload, port: int | None = None) -> None:
        """A long-running container; with a port, published on 127.0.0.1 through the edge network."""
        network = self.edge_network if port else self.data_network
        publish = ["-p", f"127.0.0.1::{port}"] if port else []
        command = workload.command or []
        docker("create", "--name", name, "--network", network, *publish, *self.args(workload), self.image, *command)
        if port:
            docker("network", "connect", self.data_network, name)
        docker("start", name)


def wait_until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds:g} s")


def running_state(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.strip()


@pytest.fixture(scope="module", params=RUN_TARGETS)
def running(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Running]:
    t = target(request.param)
    label = f"async-django.test-hosts={stack.project}"
    prefix = f"{stack.project}-{t.name}-{secrets.token_hex(3)}"
    database = f"hosts_{t.name.replace('-', '_')}"
    for leftover in docker("ps", "-aq", "--filter", f"label={label}").stdout.split():
        docker("rm", "-f", "-v", leftover, check=False)
    stack.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    stack.psql(f"CREATE DATABASE {database}")
    runner = Runner(stack, database, label)
    try:
        gate = None
        if t.gate is not None:
            # Started before the migrations: it must still be waiting, and say so.
            runner.start(f"{prefix}-gate", t.gate)
            wait_until(lambda: docker("logs", f"{prefix}-gate").stdout.strip(), 60, "the gate's first check")
            gate = {"before": running_state(f"{prefix}-gate")}
        migrations = []
        for _ in range(2):  # the second run must be harmless
            result = runner.run(t.migrate)
            migrations.append(result.stdout + result.stderr)
        if gate is not None:
            wait_until(lambda: running_state(f"{prefix}-gate").startswith("exited"), 30, "the gate's end")
            gate["after"] = running_state(f"{prefix}-gate")
        name = f"{prefix}-web"
        runner.start(name, t.web, port=t.port)
        port = int(docker("port", name, f"{t.port}/tcp").stdout.split()[0].rpartition(":")[2])
        env = {**t.web.env, **t.web.host_env}
        app = Running(
            target=t,
            container=name,
            port=port,
            host=env["DJANGO_ALLOWED_HOSTS"].split(",")[0],
            https=env.get("DJANGO_HTTPS", "false") == "true",
            token=stack.api_token,
            migrations=migrations,
            gate=gate,
        )

        def answers() -> bool:
            try:
                return app.request("GET", "/healthz", timeout=3).status == 200
            except OSError:
                return False

        try:
            wait_until(answers, 60, f"{t.name}: GET /healthz")
        except AssertionError:
            raise AssertionError(docker("logs", name).stderr[-4000:]) from None
        yield app
    finally:
        for leftover in docker("ps", "-aq", "--filter", f"label={label}").stdout.split():
            docker("rm", "-f", "-v", leftover, check=False)
        stack.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", check=False)


def test_migrations_are_a_command_of_their_own_and_safe_to_repeat(running: Running):
    first, second = running.migrations
    assert "Applying books.0001_initial... OK" in first, first
    assert "No migrations to apply." in second, second
    # The app itself never migrates when it starts.
    assert "Applying" not in docker("logs", running.container).stdout
    if running.gate is not None:
        # Kubernetes: the init container waited while migrations were missing,
        # and let the pod start once the Job's command had applied them.
        assert running.gate["before"].startswith("running"), running.gate
        assert running.gate["after"] == "exited 0", running.gate


def test_serves_on_the_hosts_port_without_nginx(running: Running):
    for path in running.target.probes:
        response = running.request("GET", path)
        assert response.status == 200, (path, response.body)
    if running.target.check_command:
        check = docker("exec", running.container, *running.target.check_command, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    page = running.request("GET", "/")
    assert page.status == 200 and 'href="/events/' in page.text()
    # It listens where the host sends requests: $PORT where the host sets one, not the default.
    table = docker("exec", running.container, "sh", "-c", "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null", check=False)
    listening = set()
    for line in table.stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # LISTEN
            address, _, port = fields[1].rpartition(":")
            if set(address) == {"0"}:  # on every address, not Docker's own DNS on 127.0.0.11
                listening.add(int(port, 16))
    assert running.target.port in listening, listening
    if "PORT" in running.target.web.host_env:
        assert int(registry()["PORT"].default) not in listening, listening


def test_serves_its_static_files(running: Running):
    page = running.request("GET", "/admin/login/")
    css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text()).group(1)
    response = running.request("GET", css)
    assert response.status == 200 and response.headers["content-type"].startswith("text/css")
    assert "immutable" in response.headers["cache-control"]


def expected_hsts(env: dict[str, str]) -> str | None:
    """What Django sends over https with these settings and app/config/settings.py's defaults (None: nothing)."""

    def flag(name: str, default: bool) -> bool:
        return env[name].strip().lower() in {"true", "on", "ok", "y", "yes", "1"} if name in env else default

    https = flag("DJANGO_HTTPS", False)
    seconds = int(env.get("DJANGO_HSTS_SECONDS", 31_536_000 if https else 0))
    if not seconds:
        return None
    value = f"max-age={seconds}"
    value += "; includeSubDomains" if flag("DJANGO_HSTS_INCLUDE_SUBDOMAINS", https) else ""
    return value + ("; preload" if flag("DJANGO_HSTS_PRELOAD", False) else "")


def test_pages_carry_the_security_headers(running: Running):
    """With no nginx in front, the app's own headers, once each; a view still relaxes its own."""
    hsts = expected_hsts({**running.target.web.env, **running.target.web.host_env}) if running.https else None
    page = running.request("GET", "/")
    login = running.request("GET", "/admin/login/").text()
    static = running.request("GET", re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login).group(1))
    embed = running.request("GET", "/books/embed/")
    for response in (page, static, embed):
        assert response.status == 200
        for name in ("x-content-type-options", "referrer-policy", "content-security-policy", "x-frame-options"):
            assert "\n" not in response.headers.get(name, ""), f"{name} more than once"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers.get("strict-transport-security") == hsts
    assert page.headers["x-frame-options"] == "DENY"
    (nonce,) = re.findall(r'<script nonce="([^"]+)">', page.text())
    policy = dict(d.strip().partition(" ")[::2] for d in page.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == f"'self' 'nonce-{nonce}'" and policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'"
    assert "x-frame-options" not in embed.headers
    assert "frame-ancestors *" in embed.headers["content-security-policy"]


def test_reads_and_writes_its_database(running: Running):
    title = f"Book {secrets.token_hex(4)}"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {running.token}"}
    created = running.request("POST", "/books/", body=f'{{"title": "{title}"}}'.encode(), headers=headers)
    assert created.status == 201, created.body
    assert title in running.request("GET", "/books/").text()
    assert running.request("GET", "/readyz").text() == "ready\n"


def test_logs_to_stdout(running: Running):
    # A 400 is logged by Django (the app's access line is off by default: the
    # host's proxy logs requests), with the id the app gave the request.
    response = running.request("GET", "/async/?seconds=-1")
    assert response.status == 400
    request_id = response.headers["x-request-id"]
    logs = docker("logs", running.container)
    assert request_id in logs.stdout and request_id not in logs.stderr


def test_runs_confined_as_the_host_says(running: Running):
    workload = running.target.web
    assert docker("exec", running.container, "id", "-u").stdout.strip() != "0"
    if workload.user:
        assert docker("exec", running.container, "id", "-u").stdout.strip() == workload.user.split(":")[0]
    read_only = docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", running.container).stdout.strip()
    assert read_only == str(workload.read_only).lower()
    if workload.read_only:
        write = docker("exec", running.container, "touch", "/srv/app/written", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        # The documented writable mount is where Python puts temporary files.
        code = "import tempfile; f = tempfile.NamedTemporaryFile(); print(f.name)"
        temporary = docker("exec", running.container, "python", "-c", code).stdout.strip()
        assert any(temporary.startswith(path + "/") for path in workload.tmpfs), temporary
    if workload.drop_all_capabilities:
        status = docker("exec", running.container, "grep", "^CapEff:", "/proc/1/status").stdout.split()
        assert status[1] == "0000000000000000", status


def test_stop_signal_drains_within_the_hosts_grace_period(running: Running):
    t = running.target
    budget = t.grace - t.pause_before_stop  # what is left of the grace period when the signal comes
    result: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            result["response"] = running.request("GET", f"/async/?seconds={SLOW_REQUEST_SECONDS}", timeout=budget + 10)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1)  # the request is in flight
    signalled = time.monotonic()
    docker("kill", "--signal", t.stop_signal, running.container)
    try:
        waited = subprocess.run(["docker", "wait", running.container], capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{t.name}: still running {budget:g} s after {t.stop_signal}, when the host kills it")
    stopped_after = time.monotonic() - signalled
    thread.join(timeout=15)
    assert "error" not in result, result
    response = result["response"]
    assert response.status == 200 and response.text() == "非同期ビューのレスポンス"
    assert waited.stdout.strip() == "0", docker("logs", running.container).stderr[-3000:]
    # It waited for the request (about 2 s were left of it), then stopped.
    assert stopped_after > SLOW_REQUEST_SECONDS - 1.5, stopped_after


def test_trial_postgres_runs_as_its_statefulset_does(stack: Stack):
    docs = target("kubernetes-trial").notes["docs"]
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "postgres"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env = {}
    for var in container["env"]:
        ref = var.get("valueFrom", {}).get("configMapKeyRef")
        env[var["name"]] = configmaps[ref["name"]][ref["key"]] if ref else var["value"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["--label", f"async-django.test-hosts={stack.project}", "--network", "none", "--read-only"]
    args += ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "emptyDir" in volume:
            args += ["--tmpfs", mount["mountPath"]]
        elif "secret" in volume:  # the stack's secrets volume holds a postgres_password file too
            args += ["--mount", f"type=volume,src={stack.project}_secrets,dst={mount['mountPath']},readonly"]
        else:  # the claim template: a fresh volume, removed with the container
            args += ["--mount", f"type=volume,dst={mount['mountPath']}"]
    name = f"{stack.project}-trial-postgres-{secrets.token_hex(3)}"
    probe = container["readinessProbe"]["exec"]["command"]
    try:
        docker("run", "-d", "--name", name, *args, container["image"])
        wait_until(lambda: docker("exec", name, *probe, check=False).returncode == 0, 90, "the readiness probe")
        listing = docker("exec", name, "ls", env["PGDATA"]).stdout.split()
        assert "PG_VERSION" in listing, listing
        query = docker("exec", name, "psql", "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"], "-Atc", "select 1")
        assert query.stdout.strip() == "1"
    finally:
        docker("rm", "-f", "-v", name, check=False)
