"""`manage.py migrate`, Django's own, with a lock timeout, a statement timeout and retries.

A migration waiting for a lock queues every query on its table behind it, so its
connection gives up after DB_MIGRATE_LOCK_TIMEOUT and tries again, up to
DB_MIGRATE_LOCK_TRIES times; a statement past DB_MIGRATE_STATEMENT_TIMEOUT fails
the deploy. Same command and options as Django's, so every host's migrate step
gets it. Why and how: docs/operations.md ("Migrations that cannot take the site down").
https://www.postgresql.org/docs/17/runtime-config-client.html#GUC-LOCK-TIMEOUT
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import OperationalError, connections
from django.db.backends.signals import connection_created

# Postgres' error codes: https://www.postgresql.org/docs/17/errcodes-appendix.html
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"  # statement_timeout (or a cancel)

# The table a DDL statement works on: ALTER TABLE "x", CREATE INDEX ... ON "x", DROP TABLE "x" ...
TABLE = re.compile(r'\b(?:TABLE|ON|INTO|UPDATE|FROM)\s+(?:IF (?:NOT )?EXISTS\s+)?(?:ONLY\s+)?("[^"]+"|\w+)', re.I)

# Who holds a lock on the table now (after this connection gave up waiting).
HOLDERS = """
    SELECT DISTINCT a.pid, a.state, date_trunc('second', now() - a.xact_start), left(a.query, 100)
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.granted AND l.locktype = 'relation' AND l.relation = to_regclass(%s) AND l.pid <> pg_backend_pid()
"""


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class Command(DjangoMigrate):
    help = DjangoMigrate.help + (
        " Runs with a lock timeout and a statement timeout (DB_MIGRATE_LOCK_TIMEOUT, DB_MIGRATE_STATEMENT_TIMEOUT),"
        " and tries a migration that gave up waiting for a lock again (DB_MIGRATE_LOCK_TRIES)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":  # the settings below are Postgres'
            return super().handle(*args, **options)
        self.migration = None  # the one being applied or unapplied
        self.last_sql = ""
        tries = max(1, settings.MIGRATE_LOCK_TRIES)
        pause = settings.MIGRATE_RETRY_PAUSE
        timeouts = {
            "lock_timeout": _ms(settings.MIGRATE_LOCK_TIMEOUT),
            "statement_timeout": _ms(settings.MIGRATE_STATEMENT_TIMEOUT),
        }

        def set_timeouts(sender: Any, connection: Any, **kwargs: Any) -> None:
            if connection is wrapper:  # this thread's connection only, not a server's in the same process
                with connection.cursor() as cursor:
                    for name, value in timeouts.items():
                        cursor.execute("SELECT set_config(%s, %s, false)", [name, value])

        wrapper = connection
        # On every (re)connection of this command, and on the one open already.
        connection_created.connect(set_timeouts)
        try:
            connection.ensure_connection()
            set_timeouts(None, connection)
            if options["verbosity"] >= 1:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
                    lock, statement = cursor.fetchone()
                self.stdout.write(
                    f"Migrating with lock_timeout={lock}, statement_timeout={statement};"
                    f" up to {tries} tries, {pause:g} s apart, for a migration that waits for a lock."
                )
            with connection.execute_wrapper(self._remember_sql):
                migrate = lambda: super(Command, self).handle(*args, **options)  # noqa: E731
                self._migrate_with_retries(connection, tries, pause, migrate)
        finally:
            connection_created.disconnect(set_timeouts)
            # A pooled connection goes back to the pool: without the command's timeouts.
            if connection.connection is not None and connection.is_usable():
                with connection.cursor() as cursor:
                    for name in timeouts:
                        cursor.execute(f"RESET {name}")

    def _migrate_with_retries(self, connection: Any, tries: int, pause: float, migrate: Callable[[], None]) -> None:
        for attempt in range(1, tries + 1):
            self.migration, self.last_sql = None, ""
            try:
                migrate()
                return
            except OperationalError as exc:
                code = getattr(exc.__cause__, "sqlstate", None)
                what = f"Migration {self.migration}" if self.migration else "The migrate step"
                if self.migration and self.verbosity >= 1:  # ends its "Applying ..." line
                    self.stdout.write(self.style.ERROR(" FAILED"))
                if code == LOCK_NOT_AVAILABLE:
                    table = self._table()
                    # A non-atomic migration may have applied part of itself: not safe to run again.
                    atomic = self.migration is None or self.migration.atomic
                    if attempt < tries and atomic:
                        self.stderr.write(
                            f"{what} gave up waiting for a lock on {table} after"
                            f" {settings.MIGRATE_LOCK_TIMEOUT:g} s and was rolled back;"
                            f" try {attempt + 1} of {tries} in {pause:g} s."
                        )
                        time.sleep(pause)
                        continue
                    raise CommandError(self._lock_message(connection, what, table, attempt, atomic)) from exc
                if code == QUERY_CANCELED:
                    raise CommandError(
                        f"{what} ran a statement longer than DB_MIGRATE_STATEMENT_TIMEOUT"
                        f" ({settings.MIGRATE_STATEMENT_TIMEOUT:g} s) and was cancelled and rolled back"
                        f" ({exc}): {self.last_sql[:200]}\nMake it shorter (build an index CONCURRENTLY in a"
                        " migration with atomic = False; backfill in batches), or raise"
                        " DB_MIGRATE_STATEMENT_TIMEOUT for this one deploy, knowing the table may be locked that long."
                    ) from exc
                raise

    def _lock_message(self, connection: Any, what: str, table: str, attempts: int, atomic: bool) -> str:
        lines = [
            f"{what} could not get a lock on {table} within DB_MIGRATE_LOCK_TIMEOUT"
            f" ({settings.MIGRATE_LOCK_TIMEOUT:g} s), {attempts} times: another session holds a lock on it"
            " (a long transaction or query, a backup, a session left idle in a transaction).",
            f"  Waiting on: {self.last_sql[:200]}",
        ]
        try:
            with connection.cursor() as cursor:
                cursor.execute(HOLDERS, [table])
                for pid, state, age, query in cursor.fetchall():
                    lines.append(f"  Held by pid {pid} ({state}, transaction open for {age}): {query}")
        except Exception as exc:  # a best effort: the message matters more
            lines.append(f"  (could not list who holds it: {exc})")
        if atomic:
            lines.append(
                "Nothing of this migration was applied (the ones before it were). End that session"
                " (SELECT pg_terminate_backend(pid)) or let it finish, then deploy again; or raise"
                " DB_MIGRATE_LOCK_TRIES or DB_MIGRATE_LOCK_TIMEOUT (queries on the table wait that long)."
            )
        else:
            lines.append(
                "It is not atomic (atomic = False), so part of it may have been applied and it was not tried"
                " again: check the table against the migration before running it again."
            )
        return "\n".join(lines)

    def _table(self) -> str:
        match = TABLE.search(self.last_sql)
        return match.group(1) if match else "a table it changes"

    def _remember_sql(self, execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
        self.last_sql = sql
        return execute(sql, params, many, context)

    def migration_progress_callback(self, action: str, migration: Any = None, fake: bool = False) -> None:
        if action in ("apply_start", "unapply_start"):
            self.migration = migration
        elif action in ("apply_success", "unapply_success"):
            self.migration = None
        super().migration_progress_callback(action, migration, fake)
