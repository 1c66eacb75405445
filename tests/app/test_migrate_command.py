"""The migrate command (core/management/commands/migrate.py): timeouts on its connection, retries on a held lock.

A real pending migration (probe_migrations: ALTER TABLE books_book ADD COLUMN)
against the test database, and a real second connection that holds a lock on
books_book in an open transaction, as a long report or a forgotten psql would.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

pytestmark = pytest.mark.django_db(transaction=True)


def columns() -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, "books_book")}


def applied() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM django_migrations WHERE app = 'books'")
        return {name for (name,) in cursor.fetchall()}


@pytest.fixture
def holder() -> Iterator[psycopg.Connection]:
    """Another session, in a transaction that has read books_book: it holds ACCESS SHARE until it ends."""
    s = connection.settings_dict
    other = psycopg.connect(host=s["HOST"], port=s["PORT"], dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"])
    try:
        other.execute("SELECT count(*) FROM books_book").fetchone()
        yield other
    finally:
        other.close()


@pytest.fixture
def probe() -> Iterator[None]:
    """The probe migrations in place of the books app's; afterwards, the database as it was."""
    with override_settings(MIGRATION_MODULES={"books": "probe_migrations"}):
        try:
            yield
        finally:
            call_command("migrate", "books", "0001_initial", verbosity=0)
    assert "probe" not in columns()


class ReleaseOnRetry(io.StringIO):
    """The command's stderr: ends the holder's transaction when the command announces its second try."""

    def __init__(self, holder: psycopg.Connection) -> None:
        super().__init__()
        self.holder = holder

    def write(self, text: str) -> int:
        if "try 2 of" in text:
            self.holder.rollback()
        return super().write(text)


def test_the_command_sets_its_timeouts_on_its_connection_and_resets_them():
    out = io.StringIO()
    with override_settings(MIGRATE_LOCK_TIMEOUT=1.5, MIGRATE_STATEMENT_TIMEOUT=42):
        call_command("migrate", stdout=out)
    # As Postgres reports them for the command's connection.
    assert "lock_timeout=1500ms, statement_timeout=42s" in out.getvalue(), out.getvalue()
    # Not left behind on the connection (a pooled one serves requests next).
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
        lock, statement = cursor.fetchone()
    assert lock == "0" and statement != "42s", (lock, statement)


def test_a_migration_behind_a_long_transaction_gives_up_and_fails_with_a_clear_message(probe, holder):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with (
        override_settings(MIGRATE_LOCK_TIMEOUT=0.5, MIGRATE_LOCK_TRIES=3, MIGRATE_RETRY_PAUSE=0.2),
        pytest.raises(CommandError) as failed,
    ):
        call_command("migrate", "books", "0002_add_probe_column", stdout=out, stderr=err)
    elapsed = time.monotonic() - started
    message = str(failed.value)
    # Three tries, each given up after the lock timeout: bounded, not waiting for the holder.
    assert err.getvalue().count("gave up waiting for a lock") == 2, err.getvalue()
    assert "try 3 of 3" in err.getvalue()
    assert elapsed < 20, elapsed
    # What failed, where, who holds it and what to do.
    assert 'Migration books.0002_add_probe_column could not get a lock on "books_book"' in message, message
    assert "3 times" in message and "DB_MIGRATE_LOCK_TIMEOUT" in message
    assert f"Held by pid {holder.info.backend_pid} (idle in transaction" in message, message
    assert "pg_terminate_backend" in message
    # Rolled back whole: no column, not recorded as applied.
    assert "probe" not in columns()
    assert "0002_add_probe_column" not in applied()


def test_a_retry_succeeds_once_the_lock_is_released(probe, holder):
    err = ReleaseOnRetry(holder)
    with override_settings(MIGRATE_LOCK_TIMEOUT=0.5, MIGRATE_LOCK_TRIES=5, MIGRATE_RETRY_PAUSE=0.2):
        call_command("migrate", "books", "0002_add_probe_column", stdout=io.StringIO(), stderr=err)
    # It gave up once (the holder still there), and the second try, after the holder ended, went through.
    assert err.getvalue().count("gave up waiting for a lock") == 1, err.getvalue()
    assert "probe" in columns()
    assert "0002_add_probe_column" in applied()


def test_a_statement_past_the_statement_timeout_fails_the_migration_at_once(probe):
    call_command("migrate", "books", "0002_add_probe_column", verbosity=0)
    with override_settings(MIGRATE_STATEMENT_TIMEOUT=0.5), pytest.raises(CommandError) as failed:
        call_command("migrate", "books", "0003_slow_statement", stdout=io.StringIO(), stderr=io.StringIO())
    message = str(failed.value)
    assert "Migration books.0003_slow_statement ran a statement longer than DB_MIGRATE_STATEMENT_TIMEOUT" in message
    assert "pg_sleep" in message, message
    assert "0003_slow_statement" not in applied()
