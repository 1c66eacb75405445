"""Deployed safely: no escape hatch, no root, no open database, no shared or leaked secret."""

from __future__ import annotations

import json

import pytest

from harness.stack import ROOT, Stack, docker


@pytest.mark.parametrize("service", ["migrate", "app"])
def test_escape_hatch_stops_the_container(stack: Stack, service: str):
    result = stack.compose(
        "run", "--rm", "--no-deps", "-e", "DJANGO_ALLOW_ASYNC_UNSAFE=1", service, check=False, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "core.E001" in output and "DJANGO_ALLOW_ASYNC_UNSAFE is set" in output, output[-3000:]


def test_sync_orm_call_in_async_code_raises_in_the_running_container(stack: Stack):
    code = (
        "import asyncio\n"
        "from django.core.exceptions import SynchronousOnlyOperation\n"
        "from books.models import Book\n"
        "async def mistake():\n"
        "    return [book.title for book in Book.objects.all()]\n"
        "try:\n"
        "    asyncio.run(mistake())\n"
        "except SynchronousOnlyOperation as exc:\n"
        "    print('raised:', type(exc).__name__)\n"
    )
    result = stack.exec("app", "python", "manage.py", "shell", "-c", code)
    assert "raised: SynchronousOnlyOperation" in result.stdout, result.stdout + result.stderr


def test_app_runs_as_non_root(stack: Stack):
    uids = stack.exec("app", "sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout.split("\n")
    assert uids and all(line.split()[1:] == ["10001"] * 4 for line in uids if line), uids
    user = docker("image", "inspect", "--format", "{{.Config.User}}", stack.image("app")).stdout
    assert user.strip() == "10001:10001"


def test_only_nginx_publishes_a_port_on_loopback(stack: Stack):
    published = {}
    for line in stack.compose("ps", "--format", "json").stdout.splitlines():
        container = json.loads(line)
        published[container["Service"]] = [p for p in container.get("Publishers") or [] if p.get("PublishedPort")]
    assert set(published) >= {"nginx", "app", "db"}
    assert [p["URL"] for p in published["nginx"]] == ["127.0.0.1"]
    assert all(not ports for service, ports in published.items() if service != "nginx"), published


def test_database_is_on_a_network_nginx_is_not_on(stack: Stack):
    def networks(service: str) -> set[str]:
        out = docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", stack.container_id(service)).stdout
        return set(json.loads(out))

    assert not networks("db") & networks("nginx")
    assert networks("db") <= networks("app")
    data_network = next(iter(networks("db")))
    assert docker("network", "inspect", "--format", "{{.Internal}}", data_network).stdout.strip() == "true"


def test_migrations_ran_once_before_the_app(stack: Stack):
    state = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", stack.container_id("migrate")).stdout
    assert state.split() == ["exited", "0"]
    assert "Applying books.0001_initial" in stack.logs("migrate")
    assert "Applying" not in stack.logs("app")
    plan = stack.exec("app", "python", "manage.py", "migrate", "--plan").stdout
    assert "No planned migration operations" in plan


def read_secret(stack: Stack, name: str) -> str:
    return stack.exec("app", "cat", f"/srv/secrets/{name}").stdout.strip()


def test_each_installation_gets_its_own_secrets_that_survive_restarts(stack: Stack):
    key, password = read_secret(stack, "django_secret_key"), read_secret(stack, "postgres_password")
    assert len(key) >= 50 and len(password) >= 50 and key != password
    assert key not in (ROOT / "docker-compose.yml").read_text() + (ROOT / ".env.example").read_text()
    rerun = stack.compose("run", "--rm", "secrets")
    assert "DJANGO_SECRET_KEY kept" in rerun.stdout and "POSTGRES_PASSWORD kept" in rerun.stdout
    stack.compose("restart", "app")
    stack.up()
    assert read_secret(stack, "django_secret_key") == key
    assert stack.get("/readyz").status == 200  # the kept password still opens the database


def test_no_secret_in_the_image_or_the_logs(stack: Stack):
    values = [read_secret(stack, "django_secret_key"), read_secret(stack, "postgres_password"), stack.api_token]
    history = "".join(
        docker("history", "--no-trunc", image).stdout
        for image in (stack.image("app"), stack.image("secrets"), stack.image("nginx"))
    )
    image_env = docker("image", "inspect", "--format", "{{json .Config.Env}}", stack.image("app")).stdout
    logs = stack.compose("logs", "--no-color").stdout
    for value in values:
        assert value not in history and value not in image_env and value not in logs
    listing = docker("run", "--rm", "--entrypoint", "sh", stack.image("app"), "-c", "ls -A /srv/secrets; ls -A /srv")
    assert ".env" not in listing.stdout.split()


def test_image_has_no_compiler_and_compiled_bytecode(stack: Stack):
    script = (
        "for c in gcc cc g++ make; do command -v $c && exit 1; done; "
        "ls /srv/app/books/__pycache__/views.*.pyc /srv/app/config/__pycache__/settings.*.pyc"
    )
    docker("run", "--rm", "--entrypoint", "sh", stack.image("app"), "-c", script)


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_check_deploy_default_configuration_has_no_errors(stack: Stack):
    result = stack.exec("app", "python", "manage.py", "check", "--deploy", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_production_configuration_has_no_warnings(stack: Stack):
    env_flags = [flag for name, value in env_example().items() for flag in ("-e", f"{name}={value}")]
    result = stack.compose(
        "run", "--rm", "--no-deps", *env_flags, "app",
        "python", "manage.py", "check", "--deploy", "--fail-level", "WARNING",
        check=False, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
