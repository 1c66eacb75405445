"""The migrate step on the running stack: its timeouts, and a migration stuck behind a lock that spares the site.

See docs/operations.md, "Migrations that cannot take the site down".
"""

from __future__ import annotations

import subprocess
import time

from harness.stack import Stack
from tests import load

# Each read waits behind the queued ALTER TABLE for at most the lock timeout (1 s here).
NO_READ_LONGER_THAN = 5.0


def test_the_migrate_step_runs_with_the_timeouts_from_the_environment(stack: Stack):
    """`manage.py migrate` (core/management/commands/migrate.py) sets its connection's timeouts from DB_MIGRATE_*."""
    # As the stack started it: the defaults, as Postgres reports them for the step's connection.
    assert "Migrating with lock_timeout=2s, statement_timeout=1min;" in stack.logs("migrate")
    result = stack.compose(
        # --no-deps: the database is up; converging it again could replace its container.
        "run", "--rm", "--no-deps", "-e", "DB_MIGRATE_LOCK_TIMEOUT=1.5", "-e", "DB_MIGRATE_STATEMENT_TIMEOUT=45",
        "migrate",
    )  # fmt: skip
    assert "Migrating with lock_timeout=1500ms, statement_timeout=45s;" in result.stdout, result.stdout
    assert "No migrations to apply." in result.stdout


def holding_a_lock(stack: Stack) -> bool:
    return stack.psql(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.granted AND l.relation = 'books_book'::regclass AND a.state = 'idle in transaction'"
    ) not in ("", "0")


def probe_applied(stack: Stack) -> bool:
    column = stack.psql(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'books_book' AND column_name = 'probe'"
    )
    recorded = stack.psql(
        "SELECT count(*) FROM django_migrations WHERE app = 'books' AND name = '0002_add_probe_column'"
    )
    return (column, recorded) != ("0", "0")


def migrate_probe(stack: Stack, target: str) -> subprocess.CompletedProcess[str]:
    """The migrate command, in the test image, with a migration of books_book pending (probe_migrations)."""
    return stack.compose(
        "run", "--rm", "--no-deps",
        "-e", "DJANGO_SETTINGS_MODULE=migration_probe_settings", "-e", "PYTHONPATH=/srv/tests",
        "-e", "DB_MIGRATE_LOCK_TIMEOUT=1", "-e", "DB_MIGRATE_LOCK_TRIES=3", "-e", "DB_MIGRATE_RETRY_PAUSE=2",
        "tests", "python", "/srv/app/manage.py", "migrate", "books", target, "--noinput", "--skip-checks",
        check=False, with_tests=True, timeout=180,
    )  # fmt: skip


def test_a_migration_behind_a_long_transaction_gives_up_while_reads_are_served(stack: Stack):
    """A psql session holds a lock on books_book in an open transaction (as a long report would) while a migration
    that alters books_book runs: it gives up within its lock timeout, tries again, fails with a message naming the
    migration and the table, and /books/ is served through nginx the whole time. The migration comes from the test
    image (tests/app/probe_migrations) and is never applied, so the stack's database is left as it was."""
    assert stack.get("/books/").status == 200
    psql = 'PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") psql -X -q -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    holder = subprocess.Popen(
        stack.compose_args("exec", "-T", "db", "sh", "-c", psql),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert holder.stdin is not None
        holder.stdin.write("BEGIN;\nSELECT count(*) FROM books_book;\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 30
        while not holding_a_lock(stack):
            assert time.monotonic() < deadline, "the psql session did not take its lock"
            time.sleep(0.2)

        with load.Load(stack.port, [load.get("/books/")], threads=4, pause=0.05, max_seconds=150) as reads:
            started = time.monotonic()
            result = migrate_probe(stack, "0002_add_probe_column")
            ended = time.monotonic()
            time.sleep(1)
        output = result.stdout + result.stderr
        print(output[-3000:])
        # It gave up: three tries of about a second each, then a clear failure.
        assert result.returncode != 0, output
        assert output.count("gave up waiting for a lock") == 2, output
        assert 'Migration books.0002_add_probe_column could not get a lock on "books_book"' in output, output
        assert "idle in transaction" in output and "DB_MIGRATE_LOCK_TIMEOUT" in output
        assert ended - started < 90, f"the migrate command took {ended - started:.1f} s"
        # Reads were served throughout, none held long behind the waiting ALTER TABLE.
        during = reads.between(started, ended)
        assert len(during) > 20, "reads ran while the migration waited"
        slow_or_failed = [r.describe() for r in reads.results if r.status != 200 or r.elapsed > NO_READ_LONGER_THAN]
        assert not slow_or_failed, slow_or_failed
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # psql ends; its transaction is rolled back
        holder.wait(30)
        if probe_applied(stack):  # only when the test failed: the database back as it was
            migrate_probe(stack, "0001_initial")
    assert not probe_applied(stack)
