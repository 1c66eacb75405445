"""Sizing: workers follow the container's CPU limit, and the check core.E003 holds every pool to the database."""

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core import checks as django_checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from django.test import override_settings
from psycopg import sql

from core import checks, sizing
from core.startup import refuse_to_start_on_check_errors


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    """A cgroup directory as the kernel shows it, with the given files."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def ids(messages: list) -> list[str]:
    return [m.id for m in messages]


# --- Workers ------------------------------------------------------------------------------
@pytest.mark.parametrize(("cpu_max", "cpus"), [("100000 100000", 1), ("150000 100000", 2), ("400000 100000", 4)])
def test_workers_follow_the_cpu_limit_rounded_up(tmp_path, cpu_max, cpus):
    assert sizing.worker_count({}, cgroup(tmp_path, {"cpu.max": cpu_max})) == cpus


def test_a_fraction_of_a_cpu_is_one_worker(tmp_path):
    assert sizing.worker_count({}, cgroup(tmp_path, {"cpu.max": "25000 100000"})) == 1


def test_cgroup_v1_quota(tmp_path):
    root = cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert sizing.cpu_limit(root) == 3
    unlimited = cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert sizing.cpu_limit(unlimited) is None


def test_without_a_limit_the_visible_cores(tmp_path):
    import os

    assert sizing.worker_count({}, cgroup(tmp_path, {"cpu.max": "max 100000"})) == os.process_cpu_count()
    assert sizing.worker_count({}, tmp_path / "no-cgroup") == os.process_cpu_count()


def test_an_explicit_count_wins_over_the_limit(tmp_path):
    assert sizing.worker_count({"GUNICORN_WORKERS": "3"}, cgroup(tmp_path, {"cpu.max": "100000 100000"})) == 3


@pytest.mark.parametrize(
    ("raw", "error"),
    [("many", "GUNICORN_WORKERS must be a whole number, not 'many'"), ("0", "GUNICORN_WORKERS must be at least 1")],
)
def test_a_bad_count_is_named(raw, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        sizing.worker_count({"GUNICORN_WORKERS": raw})


# --- The sum ------------------------------------------------------------------------------
def test_budget_counts_a_surging_replica_the_migrate_step_and_the_spare():
    budget = sizing.ConnectionBudget(replicas=2, workers=4, pool_max=10, spare=5)
    assert budget.total == (2 + 1) * 4 * (10 + 1) + 10 + 5
    assert budget.explain().endswith("= 147")
    for name in ("APP_REPLICAS", "GUNICORN_WORKERS", "APP_CPUS", "DB_POOL_MAX_SIZE", "DB_SPARE_CONNECTIONS"):
        assert name in budget.explain()


# --- The check, against the stack's Postgres ------------------------------------------------
def available() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - current_setting('reserved_connections')::int"
        )
        return cursor.fetchone()[0]


def pool_max() -> int:
    return connection.settings_dict["OPTIONS"]["pool"]["max_size"]


def task_workers() -> int:
    """The task workers' connections: TASK_WORKER_REPLICAS + 1 during a deploy, a small pool each."""
    return (settings.TASK_WORKER_REPLICAS + 1) * sizing.TASK_WORKER_POOL_SIZE


def replicas_that_fit(workers: int, spare: int) -> int:
    """The largest APP_REPLICAS whose sum still fits the database."""
    return (available() - pool_max() - spare - task_workers()) // (workers * (pool_max() + 1)) - 1


@pytest.mark.django_db
def test_the_defaults_fit(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    assert checks.database_connections_fit(None, databases=["default"]) == []


@pytest.mark.django_db
def test_the_check_runs_where_a_database_is_named(monkeypatch):
    # Django's rule for database checks: `check` alone skips them; migrate and
    # `check --database` name their database; core.startup names them all.
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    with override_settings(APP_REPLICAS=available()):
        assert "core.E003" not in ids(django_checks.run_checks())
        assert "core.E003" in ids(django_checks.run_checks(databases=["default"]))
        assert ids(django_checks.run_checks(tags=[checks.SIZING], databases=["default"])) == ["core.E003"]


@pytest.mark.django_db
def test_the_last_replica_that_fits_and_the_first_that_does_not(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "2")
    fits = replicas_that_fit(workers=2, spare=5)
    with override_settings(APP_REPLICAS=fits, DB_SPARE_CONNECTIONS=5):
        assert checks.database_connections_fit(None, databases=["default"]) == []
    with override_settings(APP_REPLICAS=fits + 1, DB_SPARE_CONNECTIONS=5):
        (message,) = checks.database_connections_fit(None, databases=["default"])
    assert message.id == "core.E003" and message.is_serious()
    total = (fits + 2) * 2 * (pool_max() + 1) + task_workers() + pool_max() + 5
    assert f"may open {total} connections to database 'default', more than the {available()} it allows" in message.msg
    names = ("APP_REPLICAS", "GUNICORN_WORKERS", "APP_CPUS", "DB_POOL_MAX_SIZE", "DB_SPARE_CONNECTIONS")
    for name in (*names, "TASK_WORKER_REPLICAS"):
        assert name in message.msg + message.hint
    assert "max_connections" in message.hint


@pytest.fixture
def limited_role() -> Iterator[dict[str, str]]:
    """A login role capped at 3 connections (CONNECTION LIMIT), as managed databases often cap the app's."""
    name, password = f"sizing_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 3 PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))  # fmt: skip
        try:
            yield {"USER": name, "PASSWORD": password}
        finally:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.django_db
def test_a_role_connection_limit_counts(monkeypatch, limited_role):
    """The lower of the server's and the role's limit is the one that counts."""
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    connections.settings["capped"] = {**connections.settings["default"], **limited_role}
    try:
        (message,) = checks.database_connections_fit(None, databases=["capped"])
    finally:
        del connections["capped"]
        del connections.settings["capped"]
    assert message.id == "core.E003"
    assert "more than the 3 it allows (the role's CONNECTION LIMIT, 3)" in message.msg


def test_an_unreachable_database_is_a_warning_not_a_refusal(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    connections.settings["unreachable"] = {**connections.settings["default"], "HOST": "127.0.0.1", "PORT": 9}
    try:
        (message,) = checks.database_connections_fit(None, databases=["unreachable"])
    finally:
        del connections["unreachable"]
        del connections.settings["unreachable"]
    assert message.id == "core.W012" and not message.is_serious()
    assert "'unreachable'" in message.msg


def test_a_bad_worker_count_is_an_error_not_a_traceback(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "lots")
    (message,) = checks.database_connections_fit(None, databases=["default"])
    assert message.id == "core.E003" and "GUNICORN_WORKERS must be a whole number" in message.msg


@pytest.mark.django_db
def test_startup_refuses_when_the_pools_do_not_fit(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    too_many = override_settings(APP_REPLICAS=available())
    with too_many, pytest.raises(ImproperlyConfigured, match=r"core\.E003.*APP_REPLICAS"):
        refuse_to_start_on_check_errors()
