"""Migrations the previous release can run beside: the check, on every migration of the project's apps.

A change the old code breaks on (a dropped or renamed column or table, a NOT NULL column without a
database default) fails unless its Migration says ``contract = True``.
See docs/operations.md, "Migrations that cannot take the site down".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState
from django.db.models import NOT_PROVIDED


def _not_null_without_db_default(field: models.Field) -> bool:
    generated = isinstance(field, models.GeneratedField)
    return not (field.null or field.many_to_many or generated or field.db_default is not NOT_PROVIDED)


def unsafe_operations(migration: migrations.Migration, before: ProjectState) -> list[str]:
    """What in `migration` the previous release cannot run beside, given the state `before` it; [] if all is well."""
    if getattr(migration, "contract", False):
        return []
    app = migration.app_label

    def model(name: str) -> object | None:
        return before.models.get((app, name.lower()))

    def field(model_name: str, name: str) -> models.Field | None:
        state = model(model_name)
        return state.fields.get(name) if state else None

    problems = []
    for op in migration.operations:
        if isinstance(op, migrations.RemoveField) and field(op.model_name, op.name):
            problems.append(f"RemoveField {op.model_name}.{op.name}: the previous release still reads and writes it")
        elif isinstance(op, migrations.RenameField) and field(op.model_name, op.old_name):
            problems.append(f"RenameField {op.model_name}.{op.old_name}: the previous release uses the old name")
        elif isinstance(op, migrations.DeleteModel) and model(op.name):
            problems.append(f"DeleteModel {op.name}: the previous release still queries its table")
        elif isinstance(op, migrations.RenameModel) and model(op.old_name):
            problems.append(f"RenameModel {op.old_name}: the previous release queries the old table")
        elif isinstance(op, migrations.AlterModelTable) and model(op.name):
            problems.append(f"AlterModelTable {op.name}: the previous release queries the old table")
        elif isinstance(op, migrations.AddField) and model(op.model_name) and _not_null_without_db_default(op.field):
            problems.append(
                f"AddField {op.model_name}.{op.name}: NOT NULL without db_default; the previous release's"
                " INSERTs leave it out and fail"
            )
        elif isinstance(op, migrations.AlterField):
            old = field(op.model_name, op.name)
            if old is not None and old.null and _not_null_without_db_default(op.field):
                problems.append(
                    f"AlterField {op.model_name}.{op.name}: made NOT NULL without db_default; the previous"
                    " release may still write NULL or leave it out"
                )
    return problems


def project_migrations(loader: MigrationLoader) -> dict[tuple[str, str], migrations.Migration]:
    """The migrations of the project's own apps (app/*/migrations), not Django's or a package's."""
    base = Path(settings.BASE_DIR).resolve()
    ours = {c.label for c in apps.get_app_configs() if Path(c.path).resolve().is_relative_to(base)}
    return {key: m for key, m in loader.disk_migrations.items() if key[0] in ours}


def test_no_migration_breaks_the_previous_release():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    ours = project_migrations(loader)
    assert ("books", "0001_initial") in ours, sorted(ours)
    assert not any(app in {"auth", "admin", "contenttypes", "sessions"} for app, _ in ours)
    problems = {
        f"{app}.{name}": found
        for (app, name), migration in sorted(ours.items())
        if (found := unsafe_operations(migration, loader.project_state((app, name), at_end=False)))
    }
    assert not problems, (
        f"Migrations the previous release cannot run beside during a rolling deploy: {problems}. Split each"
        " change into expand and contract across two deploys (docs/operations.md, 'Migrations'); the contract"
        " migration, deployed once no running release uses what it drops, says `contract = True`."
    )


# --- The check catches each kind, on the real books.Book as the previous release has it ---------------
@pytest.fixture(scope="module")
def book_state() -> ProjectState:
    return MigrationLoader(None, ignore_no_migrations=True).project_state(("books", "0001_initial"))


def change(*operations: migrations.operations.base.Operation, contract: bool = False) -> migrations.Migration:
    migration = migrations.Migration("0002_change", "books")
    migration.dependencies = [("books", "0001_initial")]
    migration.operations = list(operations)
    if contract:
        migration.contract = True
    return migration


def with_nullable_isbn(state: ProjectState) -> ProjectState:
    """The state with a nullable books.Book.isbn, as an earlier expand step would leave it."""
    state = state.clone()
    migrations.AddField("book", "isbn", models.CharField(max_length=13, null=True)).state_forwards("books", state)
    return state


BREAKING = {
    "drop a column": migrations.RemoveField("book", "title"),
    "rename a column": migrations.RenameField("book", "title", "name"),
    "drop a table": migrations.DeleteModel("book"),
    "rename a model": migrations.RenameModel("book", "volume"),
    "rename a table": migrations.AlterModelTable("book", "books_volume"),
    # A Python default is not enough: Django fills existing rows with it, then drops it from the column.
    "add NOT NULL with a Python default only": migrations.AddField(
        "book", "subtitle", models.CharField(max_length=100, default="")
    ),
    "add NOT NULL without a default": migrations.AddField("book", "pages", models.IntegerField()),
    "make a column NOT NULL": migrations.AlterField("book", "isbn", models.CharField(max_length=13)),
}


@pytest.mark.parametrize("operation", BREAKING.values(), ids=list(BREAKING))
def test_each_breaking_operation_is_flagged(operation, book_state):
    found = unsafe_operations(change(operation), with_nullable_isbn(book_state))
    assert len(found) == 1, found
    assert found[0].startswith(type(operation).__name__)
    # Unless the migration says it is the contract step.
    assert unsafe_operations(change(operation, contract=True), with_nullable_isbn(book_state)) == []


SAFE = {
    "add a nullable column": migrations.AddField("book", "isbn", models.CharField(max_length=13, null=True)),
    "add NOT NULL with a database default": migrations.AddField("book", "pages", models.IntegerField(db_default=0)),
    "widen a column": migrations.AlterField("book", "title", models.CharField(max_length=300)),
    "add a table": migrations.CreateModel("Shelf", [("id", models.BigAutoField(primary_key=True))]),
    "add an index": migrations.AddIndex("book", models.Index(fields=["created_at"], name="book_created_idx")),
}


@pytest.mark.parametrize("operation", SAFE.values(), ids=list(SAFE))
def test_expand_operations_pass(operation, book_state):
    assert unsafe_operations(change(operation), book_state) == []


def test_changes_to_a_model_new_in_the_same_migration_pass(book_state):
    new = change(
        migrations.CreateModel("Shelf", [("id", models.BigAutoField(primary_key=True))]),
        migrations.AddField("shelf", "name", models.CharField(max_length=50)),
    )
    assert unsafe_operations(new, book_state) == []
