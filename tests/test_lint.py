"""Linters over the whole repository: ruff, hadolint, docker compose config and nginx -t."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT, Stack

BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint():
    result = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint():
    result = run(str(BIN / "hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_is_valid(stack: Stack):
    for with_tests in (False, True):
        stack.compose("config", "--quiet", with_tests=with_tests)
    # The README's plain `docker compose up`: no .env, no variables.
    result = run("docker", "compose", "--env-file", "/dev/null", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_nginx_config_is_valid(stack: Stack):
    # The image's entrypoint renders the template, then nginx checks the result.
    result = run(
        "docker", "run", "--rm", "-e", "NGINX_UPSTREAM=127.0.0.1:8000", "-e", "NGINX_TRUSTED_PROXY=10.0.0.0/8",
        "async-django-nginx:local", "nginx", "-t",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test is successful" in result.stderr
