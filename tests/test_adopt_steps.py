"""docs/adopt.md's steps on the host, without Docker: the settings script on the shapes it must merge or refuse,
and the layout the guide's first step says to skip.

tests/test_adopt.py follows the guide on a fresh `startproject` and serves the result; this covers the other
shapes a project takes: what a refusal says, that it changes nothing, and a project already in a folder of its own.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.stack import ROOT
from tests.test_adopt import VARIABLES, guide_steps

SCRIPT = ROOT / "docs" / "adopt" / "merge_settings.py"
PACKAGE = "mysite"
# A project's settings as `startproject` writes them, trimmed, plus a setting, an import and a statement of its own.
YOURS = """\"\"\"Settings of mysite.\"\"\"
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "django-insecure-not-for-production"
DEBUG = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notes",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "notes.middleware.TimingMiddleware",
]
ROOT_URLCONF = "mysite.urls"
NOTES_PER_PAGE = int(os.environ.get("NOTES_PER_PAGE", "20"))
if DEBUG:
    NOTES_PER_PAGE = 5
"""


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=project, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def project_with(tmp_path: Path, settings: str) -> Path:
    (tmp_path / "app" / PACKAGE).mkdir(parents=True)
    (tmp_path / "app" / PACKAGE / "settings.py").write_text(settings)
    return tmp_path


def files(project: Path) -> dict[str, bytes]:
    return {str(path.relative_to(project)): path.read_bytes() for path in project.rglob("*") if path.is_file()}


def test_it_runs_on_the_oldest_python_the_guide_names():
    ast.parse(SCRIPT.read_text(), feature_version=(3, 8))


def test_the_settings_become_the_blueprints_with_the_projects_apps_and_settings(tmp_path: Path):
    project = project_with(tmp_path, YOURS)
    result = run(project, PACKAGE)
    assert result.returncode == 0, result.stderr
    settings = project / "app" / PACKAGE / "settings.py"
    assert (project / "app" / PACKAGE / "settings.py.before-blueprint").read_text() == YOURS
    merged = settings.read_text()
    tree = ast.parse(merged)
    values = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign)}
    apps = ast.literal_eval(values["INSTALLED_APPS"])
    assert apps[:7] == ast.literal_eval(ast.parse(YOURS).body[6].value), "the project's apps first, in its order"
    assert {"core", "worker", "django_tasks_db"} <= set(apps[7:]) and "books" not in apps
    assert len(apps) == len(set(apps))
    # The blueprint's own values, with the project's package in them; nothing left naming `config`.
    assert ast.literal_eval(values["ROOT_URLCONF"]) == f"{PACKAGE}.urls" and '"config.' not in merged
    assert "core.middleware.RequestIdMiddleware" in ast.literal_eval(values["MIDDLEWARE"])
    # Carried over at the end: the imports and the setting only the project has.
    carried = merged.split("Yours, carried over")[1]
    assert "import os" in carried and "NOTES_PER_PAGE = int(" in carried and "SECRET_KEY" not in carried
    # What the user must look at is said.
    said = {line.split(":")[0].strip(): line for line in result.stdout.splitlines()}
    kept = said["set in both, the blueprint's value kept (compare with settings.py.before-blueprint)"]
    assert {"SECRET_KEY", "DEBUG", "MIDDLEWARE"} <= set(kept.split(": ")[1].split(", ")), kept
    assert "ROOT_URLCONF" not in kept, "the same value in both: nothing to compare"
    assert said["MIDDLEWARE"].endswith("notes.middleware.TimingMiddleware"), said
    by_hand = said["not carried over, move it by hand if you need it"]
    assert by_hand.endswith(f"line {YOURS.splitlines().index('if DEBUG:') + 1}"), by_hand
    compile(merged, str(settings), "exec")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("INSTALLED_APPS = [", "INSTALLED_APPS = BASE_APPS + ["), "INSTALLED_APPS is not a plain list"),
        (('"notes",\n]', '"notes",\n    "core",\n]'), "INSTALLED_APPS has core"),
        (('"notes",\n]', '"notes",\n    "worker.apps.WorkerConfig",\n]'), "INSTALLED_APPS has worker"),
        (("from pathlib import Path\n", "from pathlib import Path\nfrom .base import *\n"), "imports *"),
    ],
    ids=["computed-apps", "app-called-core", "app-called-worker", "split-settings"],
)
def test_settings_it_cannot_merge_are_refused_and_left_as_they_were(
    tmp_path: Path, change: tuple[str, str], reason: str
):
    assert change[0] in YOURS
    project = project_with(tmp_path, YOURS.replace(*change))
    before = files(project)
    result = run(project, PACKAGE)
    assert result.returncode != 0
    assert reason in result.stderr and "Nothing changed: merge by hand (docs/adopt.md, step 4)" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert files(project) == before


def test_a_second_run_is_refused_and_keeps_both_files(tmp_path: Path):
    project = project_with(tmp_path, YOURS)
    assert run(project, PACKAGE).returncode == 0
    after_first = files(project)
    result = run(project, PACKAGE)
    assert result.returncode != 0 and "has run already" in result.stderr, result.stderr
    assert files(project) == after_first


@pytest.mark.parametrize("args", [("othersite",), ()], ids=["wrong-package", "no-package"])
def test_a_wrong_or_missing_package_name_is_a_clear_error(tmp_path: Path, args: tuple[str, ...]):
    project = project_with(tmp_path, YOURS)
    before = files(project)
    result = run(project, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert ("no such file" if args else "usage:") in result.stderr, result.stderr
    assert files(project) == before


def test_a_project_in_a_folder_of_its_own_skips_the_first_step(tmp_path: Path):
    # `startproject mysite` without the trailing "." puts manage.py in a folder of its own.
    repository = tmp_path / "repository"
    (repository / PACKAGE / PACKAGE).mkdir(parents=True)
    (repository / PACKAGE / "manage.py").write_text("# manage.py\n")
    (repository / PACKAGE / PACKAGE / "__init__.py").write_text("")
    (repository / PACKAGE / PACKAGE / "settings.py").write_text(YOURS)
    (repository / PACKAGE / PACKAGE / "asgi.py").write_text("# the project's own\n")
    (repository / "README.md").write_text("the project\n")
    # The guide: rename that folder to `app`, skip step 1, run the others from the folder above it.
    (repository / PACKAGE).rename(repository / "app")
    _, steps = guide_steps()
    for number, step in enumerate(steps[1:], 2):
        environment = {**os.environ, **VARIABLES}
        result = subprocess.run(["bash", "-c", f"set -euo pipefail\n{step}"], cwd=repository, env=environment,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, f"step {number}:\n{step}\n{result.stdout}{result.stderr}"
    app = repository / "app"
    assert sorted(path.name for path in app.iterdir()) == ["core", "manage.py", PACKAGE, "worker"]
    assert (app / PACKAGE / "settings.py.before-blueprint").read_text() == YOURS
    assert f'"{PACKAGE}.urls"' in (app / PACKAGE / "settings.py").read_text()
    assert f"{PACKAGE}.settings" in (app / PACKAGE / "asgi.py").read_text()
    for path in ("Dockerfile", "docker-compose.yml", ".dockerignore", ".env.example", "deploy/gunicorn", "nginx/site"):
        assert (repository / path).exists(), path
    assert f"ENV DJANGO_SETTINGS_MODULE={PACKAGE}.settings" in (repository / "Dockerfile").read_text()
    assert (repository / "README.md").read_text() == "the project\n"
