"""The task runner (Makefile): every everyday command is there, and they drive the real stack."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from harness.stack import ROOT, Stack

EVERYDAY = [
    "up",
    "down",
    "logs",
    "test",
    "lint",
    "test-app",
    "bench",
    "migrate",
    "createsuperuser",
    "shell",
    "psql",
    "backup",
    "restore",
]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str, compose: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"COMPOSE={compose}"] if compose else []
    return subprocess.run(["make", "--no-print-directory", *args, *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_help_lists_every_everyday_command():
    result = make("help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("make ")}
    assert set(EVERYDAY) <= listed, set(EVERYDAY) - listed


@pytest.mark.parametrize("target", EVERYDAY)
def test_each_command_is_well_formed(target: str):
    result = make("--dry-run", target, "FILE=backups/x.dump")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_commands_run_against_the_stack(stack: Stack):
    compose = shlex.join(stack.compose_args())
    migrate = make("migrate", compose=compose)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "No migrations to apply" in migrate.stdout
    ps = make("ps", compose=compose)
    assert ps.returncode == 0 and "nginx" in ps.stdout, ps.stdout + ps.stderr
    psql = subprocess.run(["make", "--no-print-directory", "psql", f"COMPOSE={compose}"], cwd=ROOT,
                          input="SELECT 40 + 2;\n", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "42" in psql.stdout, psql.stdout + psql.stderr


def test_restore_without_a_file_is_refused():
    result = make("restore", "FILE=")
    assert result.returncode != 0
    assert "make restore FILE=" in result.stderr
