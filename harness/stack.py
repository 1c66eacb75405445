"""Drive a throwaway copy of the stack: docker compose under a project name and port of its own.

Used by the host-side tests (tests/conftest.py) and the benchmark (bench/). Nothing here needs more than
Python 3.10's standard library and a Docker engine with compose v2.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMPOSE = ROOT / "tests" / "compose.test.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(
    command: list[str],
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """A command's output as text; with `check`, a failure raises with its output in the message."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_command(["docker", *args], check=check, timeout=timeout)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode()

    def json(self) -> object:
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> Response:
    """One HTTP/1.1 request to 127.0.0.1:port; repeated response headers (Set-Cookie) joined by newlines."""
    return exchange(http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), method, path, body, headers)


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
) -> Response:
    """One request on `conn` (HTTP or HTTPS), which it then closes; header names in lower case."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        raw = conn.getresponse()
        merged: dict[str, str] = {}
        for name, value in raw.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}\n{value}" if key in merged else value
        return Response(raw.status, merged, raw.read())
    finally:
        conn.close()


@dataclass
class Stack:
    """One compose project: its own name, port, env file and volumes."""

    # Both can be changed so that two runs can share one Docker engine. The edge ranges of the test and
    # bench stacks are in 10.0.0.0/8, where Docker never places a network of its own choosing (such as
    # each stack's internal `data` network), so a stack's fixed range can never find its place taken.
    project: str = field(default_factory=lambda: os.environ.get("STACK_PROJECT", "async-django-test"))
    edge_subnet: str = field(default_factory=lambda: os.environ.get("STACK_EDGE_SUBNET", "10.130.81.0/24"))
    port: int = field(default_factory=free_port)
    api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # More compose files on top of docker-compose.yml (the benchmark's, say).
    extra_files: list[Path] = field(default_factory=list)
    # The directory of the docker-compose.yml it runs: this repository's, or a project made from it.
    root: Path = ROOT
    env_file: Path = field(init=False)

    def __post_init__(self) -> None:
        # A private directory (mode 700) for its settings and its API token,
        # which is given as a file, as .env.example says.
        self.directory = Path(tempfile.mkdtemp(prefix="stack-"))
        self.env_file = self.directory / "stack.env"
        token = self.directory / "api_token"
        token.write_text(self.api_token + "\n")
        token.chmod(0o644)  # the containers' user reads it; the directory keeps others out
        self.write_env({})

    def write_env(self, extra: dict[str, str]) -> None:
        values = {
            "NGINX_PORT": str(self.port),
            # Its own range, so it can run beside a stack started from the README.
            "EDGE_SUBNET": self.edge_subnet,
            "API_TOKEN_FILE": str(self.directory / "api_token"),
            # One worker: the concurrency test measures what one event loop holds.
            "GUNICORN_WORKERS": "1",
            # The app's access lines (off by default): tests read them.
            "GUNICORN_ACCESS_LOG": "-",
            **extra,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def sibling(self, name: str, offset: int, env: dict[str, str], extra_files: tuple[Path, ...] = ()) -> Stack:
        """Another stack beside this one: project <project>-<name>, its edge range `offset` /24s above this one's.

        STACK_<NAME>_EDGE_SUBNET picks the range instead; `extra_files` go on top of docker-compose.yml.
        """
        edge = ipaddress.ip_network(self.edge_subnet)
        subnet = os.environ.get(f"STACK_{name.upper()}_EDGE_SUBNET") or f"{edge.network_address + (offset << 8)}/24"
        other = Stack(project=f"{self.project}-{name}", edge_subnet=subnet, extra_files=list(extra_files))
        other.write_env(env)
        return other

    # --- docker compose ------------------------------------------------------------
    def compose_args(self, *args: str, with_tests: bool = False) -> list[str]:
        """`with_tests` adds the tests' compose file, which extends this repository's services only."""
        files = [self.compose_file, *self.extra_files, *([TEST_COMPOSE] if with_tests and self.root == ROOT else [])]
        return ["docker", "compose", "-p", self.project, "--project-directory", str(self.root),
                "--env-file", str(self.env_file), *(a for f in files for a in ("-f", str(f))), *args]  # fmt: skip

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, with_tests: bool = False
    ) -> subprocess.CompletedProcess[str]:
        command = self.compose_args(*args, with_tests=with_tests)
        environment = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROJECT_NAME"}
        return run_command(command, check=check, timeout=timeout, env=environment)

    @property
    def compose_file(self) -> Path:
        """The compose file the documented commands and scripts use, in the project's own directory."""
        return self.root / "docker-compose.yml"

    def run_script(self, *command: str, extra_files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        """A command as a user types it beside the compose file: a script of the project's, or docker.

        It reaches this stack through compose's own variables, as a user's .env would.
        """
        environment = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_FILE": os.pathsep.join(map(str, [self.compose_file, *extra_files])),
            "COMPOSE_ENV_FILES": str(self.env_file),
        }
        program = command[0] if command[0] == "docker" else str(self.root / command[0])
        return run_command([program, *command[1:]], check=False, timeout=600, env=environment, cwd=self.root)

    def up(self) -> None:
        self.compose("up", "--detach", "--wait", "--wait-timeout", "180")

    @contextmanager
    def running(self) -> Iterator[Stack]:
        """Up from a clean slate (an interrupted run may have left it behind); down, volumes and all, after."""
        self.compose("down", "--volumes", "--remove-orphans", check=False)
        try:
            self.up()
            yield self
        finally:
            self.down()

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, with_tests=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self, service: str) -> str:
        out = self.compose("logs", "--no-color", "--no-log-prefix", service).stdout
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)  # compose's line-erase codes

    def exec(self, service: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *command, check=check)

    def gunicorn_workers(self, container: str | None = None) -> list[int]:
        """The pids of gunicorn's workers: the children of the master, pid 1 in the container.

        The app service's container, or the one called `container`.
        """
        code = (
            "import pathlib\n"
            "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
            "    try:\n"
            "        stat, cmd = (p / 'stat').read_text(), (p / 'cmdline').read_bytes()\n"
            "    except OSError:\n"
            "        continue\n"
            "    if stat.rsplit(')', 1)[1].split()[1] == '1' and b'gunicorn' in cmd:\n"
            "        print(p.name)\n"
        )
        if container is None:
            out = self.exec("app", "python", "-c", code).stdout
        else:
            out = docker("exec", container, "python", "-c", code, timeout=60).stdout
        return sorted(int(pid) for pid in out.split())

    def psql(self, sql: str, check: bool = True) -> str:
        """Run SQL in the db container as the app's role; return psql's unaligned output."""
        # The password from the file Postgres was given, as deploy/db/backup.sh does.
        script = (
            'PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") '
            'psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"'
        )
        return self.exec("db", "sh", "-c", script, sql, check=check).stdout.strip()

    def image(self, service: str) -> str:
        """The image compose builds for `service` in this project (docker-compose.yml names them by project)."""
        return f"{self.project}-{service}:local"

    def container_id(self, service: str) -> str:
        return self.compose("ps", "-a", "-q", service).stdout.strip()

    def create_superuser(self, username: str = "admin") -> str:
        """Create a superuser (or give it a new password) with manage.py in the app container; return the password."""
        password = secrets.token_urlsafe(16)
        self.exec(
            "app", "python", "manage.py", "shell", "-c",
            "from django.contrib.auth.models import User\n"
            f"user = User.objects.filter(username={username!r}).first()\n"
            f"user = user or User(username={username!r}, is_staff=True, is_superuser=True)\n"
            f"user.set_password({password!r})\n"
            "user.save()",
        )  # fmt: skip
        return password

    # --- HTTP through nginx ------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> Response:
        sent = {"Host": f"localhost:{self.port}", **(headers or {})}
        return http_request(self.port, method, path, body=body, headers=sent, timeout=timeout)

    def get(self, path: str, **kwargs: object) -> Response:
        return self.request("GET", path, **kwargs)  # type: ignore[arg-type]

    def post_json(self, path: str, data: object, token: str | None = None) -> Response:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", path, body=json.dumps(data).encode(), headers=headers)

    def url(self, path: str) -> str:
        return urllib.parse.urljoin(f"http://localhost:{self.port}", path)
