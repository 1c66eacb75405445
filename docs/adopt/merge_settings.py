"""Step 4 of docs/adopt.md: make a project's settings.py the blueprint's, keeping the project's apps and settings.

Run from the project's root (the folder that holds app/): python3 merge_settings.py PACKAGE.
The old file is kept beside the new one as settings.py.before-blueprint. Where it cannot merge by itself,
it stops with a message and changes nothing. Python 3.8 or newer, standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

BLUEPRINT = Path(__file__).resolve().parents[2]
DEMO_APPS = ["books"]  # the blueprint's demo, not copied
BLUEPRINT_PACKAGES = ["core", "worker"]  # copied into app/ in step 2
BEFORE = "settings.py.before-blueprint"


class Refused(Exception):
    """The settings need merging by hand; nothing was changed."""


def assignments(tree: ast.Module) -> dict[str, ast.Assign]:
    """The module's top-level `NAME = value` statements, by name."""
    return {
        node.targets[0].id: node
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }


def literal(node: ast.Assign | None) -> object:
    if node is None:
        return None
    try:
        return ast.literal_eval(node.value)
    except ValueError:
        return None


def blueprint_settings(package: str) -> str:
    """The blueprint's settings, naming the project's package where they name theirs."""
    text = (BLUEPRINT / "app" / "config" / "settings.py").read_text()
    if '"config.' not in text:
        raise Refused('the blueprint\'s settings name no "config." module: docs/adopt.md and they disagree')
    return text.replace('"config.', f'"{package}.')


def merge(yours_text: str, ours_text: str) -> tuple[str, list[str]]:
    """The merged settings, and what to tell the user about them."""
    yours, ours = ast.parse(yours_text), assignments(ast.parse(ours_text))
    your_settings = assignments(yours)

    # INSTALLED_APPS: yours in your order, then the blueprint's that yours lacks.
    your_apps = literal(your_settings.get("INSTALLED_APPS"))
    if not isinstance(your_apps, (list, tuple)):
        raise Refused("INSTALLED_APPS is not a plain list")
    taken = sorted({app.split(".")[0] for app in your_apps} & set(BLUEPRINT_PACKAGES))
    if taken:
        raise Refused(f"INSTALLED_APPS has {', '.join(taken)}: the blueprint's apps have that name")
    node = ours["INSTALLED_APPS"]
    theirs = [app for app in literal(node) if app not in your_apps and app not in DEMO_APPS]
    lines = ours_text.splitlines(keepends=True)
    lines[node.lineno - 1 : node.end_lineno] = [
        "INSTALLED_APPS = [\n",
        *(f'    "{app}",\n' for app in your_apps),
        "    # The blueprint's: its request path, checks and migrate (core), and the\n",
        "    # task queue and its worker (django_tasks_db, worker; docs/tasks.md).\n",
        *(f'    "{app}",\n' for app in theirs),
        "]\n",
    ]
    text = "".join(lines)

    # The rest of yours: imports, and the settings the blueprint's do not set.
    carried, kept, by_hand = [], [], []
    for statement in yours.body:
        name = statement.targets[0].id if statement in your_settings.values() else None
        if isinstance(statement, ast.ImportFrom) and any(alias.name == "*" for alias in statement.names):
            raise Refused(f"line {statement.lineno} imports * (settings split over modules)")
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or (name and name not in ours):
            carried.append(ast.get_source_segment(yours_text, statement))
        elif name and name != "INSTALLED_APPS" and ast.dump(statement.value) != ast.dump(ours[name].value):
            kept.append(name)
        elif not name and not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
            by_hand.append(f"line {statement.lineno}")
    if carried:
        text += f"\n# --- Yours, carried over from {BEFORE} (docs/adopt.md) ----------\n"
        text += "\n".join(carried) + "\n"

    report = [f"INSTALLED_APPS: yours, then {', '.join(theirs)}"]
    if carried:
        report.append(f"carried over from {BEFORE}: {len(carried)} statements, at the end")
    if kept:
        report.append(f"set in both, the blueprint's value kept (compare with {BEFORE}): {', '.join(kept)}")
    your_middleware = literal(your_settings.get("MIDDLEWARE")) or []
    extra = [entry for entry in your_middleware if entry not in literal(ours["MIDDLEWARE"])]
    if extra:
        report.append(f"MIDDLEWARE: add yours where it belongs (docs/adopt.md, the settings): {', '.join(extra)}")
    if by_hand:
        report.append(f"not carried over, move it by hand if you need it: {BEFORE} {', '.join(by_hand)}")
    return text, report


def main(package: str) -> None:
    settings = Path("app", package, "settings.py")
    before = settings.with_name(BEFORE)
    try:
        if not settings.is_file():
            raise Refused("no such file: check the package name, and run this from the folder that holds app/")
        if before.exists():
            raise Refused(f"{BEFORE} exists: this step has run already")
        text, report = merge(settings.read_text(), blueprint_settings(package))
    except Refused as refused:
        raise SystemExit(f"{settings}: {refused}. Nothing changed: merge by hand (docs/adopt.md, step 4).") from None
    settings.rename(before)
    settings.write_text(text)
    print(f"{settings}: the blueprint's, with yours")
    for line in report:
        print(f"  {line}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python3 {sys.argv[0]} PACKAGE  (the package that holds your settings.py)")
    main(sys.argv[1])
