"""Sizing on the running stack: workers follow the container's CPU limit, and pools the database
cannot hold stop the migrate step and the app before they serve (check core.E003, app/core/checks.py)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from harness.stack import Stack

# More replicas than a default Postgres (max_connections 100) can give pools of 10.
TOO_MANY = "40"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize(("cpus", "workers"), [("0.5", 1), ("1", 1), ("1.5", 2)])
def test_worker_count_rounds_the_cpu_limit_up(stack: Stack, cpus: str, workers: int):
    """In a container of the image (the `stack` fixture builds it), with `docker run --cpus`."""
    if float(cpus) > (os.cpu_count() or 1):
        pytest.skip(f"Docker refuses --cpus {cpus} on a machine with {os.cpu_count()} CPUs")
    code = "from core import sizing; print(sizing.worker_count())"
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--cpus", cpus, "--workdir", "/srv/app",
         stack.image("app"), "python", "-c", code],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, output(result)
    assert int(result.stdout) == workers


def test_gunicorn_starts_one_worker_per_cpu_of_the_limit_not_of_the_host(stack: Stack):
    """The app service's limit is APP_CPUS (1 by default); without GUNICORN_WORKERS gunicorn follows it."""
    name = f"sizing-{uuid.uuid4().hex[:8]}"
    stack.compose("run", "--detach", "--no-deps", "--name", name, "-e", "GUNICORN_WORKERS=", "app")
    try:
        nano_cpus = subprocess.run(["docker", "inspect", "--format", "{{.HostConfig.NanoCpus}}", name],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert int(nano_cpus) == 1_000_000_000
        deadline = time.monotonic() + 60
        while not (workers := stack.gunicorn_workers(name)) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # gunicorn starts its workers one after another: let any extra one show
        assert len(stack.gunicorn_workers(name)) == 1, f"host CPUs: {os.cpu_count()}, workers: {workers}"
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)


def test_the_migrate_step_refuses_pools_the_database_cannot_hold(stack: Stack):
    # --no-deps: the database is up; converging it again could replace its container.
    result = stack.compose(
        "run", "--rm", "--no-deps", "-e", f"APP_REPLICAS={TOO_MANY}", "migrate", check=False, timeout=180
    )
    text = output(result)
    assert result.returncode != 0, text
    assert "core.E003" in text and f"APP_REPLICAS {TOO_MANY}" in text, text
    for name in ("GUNICORN_WORKERS", "APP_CPUS", "DB_POOL_MAX_SIZE", "DB_SPARE_CONNECTIONS", "max_connections"):
        assert name in text, text
    # As configured, the same step passes: it is the numbers, not the step, that fail.
    assert stack.compose("run", "--rm", "--no-deps", "migrate", check=False, timeout=180).returncode == 0


def test_the_app_refuses_to_start_with_pools_the_database_cannot_hold(stack: Stack):
    result = stack.compose(
        "run", "--rm", "--no-deps", "-e", f"APP_REPLICAS={TOO_MANY}", "app", check=False, timeout=180
    )
    text = output(result)
    assert result.returncode != 0, text
    assert "core.E003" in text and "APP_REPLICAS" in text, text
    # The stack's own app, sized to fit, serves on.
    assert stack.get("/readyz").status == 200
