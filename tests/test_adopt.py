"""docs/adopt.md, followed literally: a fresh `startproject` with an app of its own takes in the blueprint.

The project is made with the blueprint's image (Django 6.1): `startproject mysite`, `startapp notes`, then the
user's own code (a model, the admin, an async view, a stream). Every ```sh block of the guide runs in order,
as written, with bash; the result is built and started with its own Dockerfile and compose file and checked
through nginx. A step that no longer works, or a result that no longer serves, fails it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.stack import ROOT, Stack
from tests.test_threads import worker_threads

GUIDE = ROOT / "docs" / "adopt.md"
PACKAGE = "mysite"
# The guide's first block sets these; the test sets them itself.
VARIABLES = {"BLUEPRINT": str(ROOT), "PROJECT_PACKAGE": PACKAGE}
NOTE = "Written through the ORM"

# The user's own code, as a Django project has it before it meets the blueprint.
MODELS = """from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.text
"""
ADMIN = """from django.contrib import admin

from notes.models import Note

admin.site.register(Note)
"""
VIEWS = '''import asyncio

from django.http import HttpResponse, StreamingHttpResponse

from notes.models import Note


async def note_list(request):
    texts = [note.text async for note in Note.objects.order_by("id")]
    return HttpResponse("\\n".join(texts), content_type="text/plain; charset=utf-8")


async def ticks(request):
    """Server-Sent Events, one a second for a minute; unbuffered by nginx as docs/adopt.md says."""

    async def events():
        yield b"event: open\\ndata: ticks\\n\\n"
        for n in range(60):
            await asyncio.sleep(1)
            yield f"data: {n}\\n\\n".encode()

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
'''
URLS = """from django.urls import path

from notes import views

urlpatterns = [
    path("", views.note_list),
    path("ticks/", views.ticks),
]
"""


def guide_steps() -> tuple[str, list[str]]:
    """The guide's ```sh blocks: the one that sets the variables, and the steps after it."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", GUIDE.read_text(), flags=re.M | re.S)
    assert blocks, "docs/adopt.md has no ```sh block"
    return blocks[0], blocks[1:]


def test_the_guide_asks_for_its_two_variables_first():
    variables, steps = guide_steps()
    lines = [line.split("#")[0].strip() for line in variables.splitlines()]
    assert {re.fullmatch(r"export (\w+)=\S+", line).group(1) for line in lines if line} == set(VARIABLES), variables
    assert steps, "docs/adopt.md has no step after the variables"
    for step in steps:
        for name in re.findall(r"\$\{?([A-Z][A-Z_]+)", step):
            assert name in VARIABLES, f"a step uses ${name}, which the guide does not ask for:\n{step}"


def in_image(image: str, project: Path, entrypoint: str, *args: str) -> None:
    """Run a Django command in `image` on the project's files, as the files' owner."""
    command = ["docker", "run", "--rm", "-v", f"{project}:/work", "-w", "/work",
               "--user", f"{os.getuid()}:{os.getgid()}", "-e", f"DJANGO_SETTINGS_MODULE={PACKAGE}.settings",
               "--entrypoint", entrypoint, image, *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"


def edit(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.M)
    assert count == 1, f"{path}: no {pattern!r}"
    path.write_text(text)


def make_project(image: str, project: Path) -> None:
    """`startproject` and `startapp`, then the user's model, admin, views and URLs, and their migration."""
    in_image(image, project, "django-admin", "startproject", PACKAGE, ".")
    in_image(image, project, "python", "manage.py", "startapp", "notes")
    notes = project / "notes"
    for name, text in {"models.py": MODELS, "admin.py": ADMIN, "views.py": VIEWS, "urls.py": URLS}.items():
        (notes / name).write_text(text)
    edit(project / PACKAGE / "settings.py", r"^(\s*)(['\"])django\.contrib\.staticfiles\2,\n", r"\g<0>\1'notes',\n")
    urls = project / PACKAGE / "urls.py"
    edit(urls, r"^from django\.urls import path$", "from django.urls import include, path")
    admin_route = r"^(\s*)path\((['\"])admin/\2, admin\.site\.urls\),\n"
    edit(urls, admin_route, r"\g<0>\1path('notes/', include('notes.urls')),\n")
    in_image(image, project, "python", "manage.py", "makemigrations", "notes")
    assert (notes / "migrations" / "0001_initial.py").is_file()


def follow_the_guide(project: Path) -> None:
    _, steps = guide_steps()
    env = {**os.environ, **VARIABLES}
    for number, step in enumerate(steps, 1):
        result = subprocess.run(["bash", "-c", f"set -euo pipefail\n{step}"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, (
            f"docs/adopt.md, step {number} (```sh block {number + 1}) failed:\n{step}\n{result.stdout}{result.stderr}"
        )


@pytest.fixture(scope="module")
def adopted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("docker") is None:
        pytest.fail("docker is not on PATH: the test command needs Docker with compose v2")
    # The blueprint's app image, for Django's own commands: the host may have no Django 6.1.
    blueprint = Stack()
    project = tmp_path_factory.mktemp("adopt") / "repository"
    project.mkdir()
    # Its own project name and edge range: 48 /24s above the session stack's, or STACK_ADOPT_EDGE_SUBNET.
    edge = ipaddress.ip_network(blueprint.edge_subnet)
    subnet = os.environ.get("STACK_ADOPT_EDGE_SUBNET") or f"{edge.network_address + (48 << 8)}/24"
    stack = Stack(project=f"{blueprint.project}-adopt", edge_subnet=subnet, root=project)
    try:
        blueprint.compose("build", "--quiet", "app", timeout=1200)
        make_project(blueprint.image("app"), project)
        follow_the_guide(project)
        stack.compose("down", "--volumes", "--remove-orphans", check=False)
        stack.compose("up", "--build", "--detach", "--wait", "--wait-timeout", "180", timeout=1500)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(blueprint.directory, ignore_errors=True)


def test_the_project_is_laid_out_and_named_as_the_guide_says(adopted: Stack):
    root = adopted.root
    assert (root / "app" / "manage.py").is_file() and (root / "app" / "notes" / "models.py").is_file()
    assert re.search(rf"^name: {PACKAGE}$", (root / "docker-compose.yml").read_text(), re.M)
    dockerfile = (root / "Dockerfile").read_text()
    assert f"ENV DJANGO_SETTINGS_MODULE={PACKAGE}.settings" in dockerfile
    assert " AS test" not in dockerfile and "tests/" not in dockerfile.split("# Copying it")[1]


def test_migrate_applied_the_projects_migrations_before_the_app(adopted: Stack):
    assert "Applying notes.0001_initial" in adopted.logs("migrate")
    assert adopted.get("/readyz").text().strip() == "ready"


def test_the_async_view_lists_what_the_orm_wrote(adopted: Stack):
    assert adopted.get("/notes/").status == 200
    adopted.exec("app", "python", "manage.py", "shell", "-c",
                 f"from notes.models import Note; Note.objects.create(text={NOTE!r})")  # fmt: skip
    response = adopted.get("/notes/")
    assert response.status == 200 and NOTE in response.text().splitlines(), response.text()


def test_admin_static_files_are_served(adopted: Stack):
    login = adopted.get("/admin/login/")
    assert login.status == 200
    stylesheets = re.findall(r'href="(/static/admin/css/[^"]+\.css)"', login.text())
    assert stylesheets, login.text()[:2000]
    for path in stylesheets:
        css = adopted.get(path)
        assert css.status == 200 and css.headers["content-type"].startswith("text/css"), (path, css.status)
        assert css.body


async def hold_open_streams(stack: Stack, count: int) -> int:
    """Open `count` of the project's streams, wait for each one's first event, and count the worker's threads."""
    connections = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            writer.write(f"GET /notes/ticks/ HTTP/1.1\r\nHost: localhost:{stack.port}\r\n\r\n".encode())
            connections.append((reader, writer))
        # Each first event arrives while its stream is open: nginx passes it on unbuffered.
        heads = await asyncio.wait_for(
            asyncio.gather(*(reader.readuntil(b"event: open\n") for reader, _ in connections)), timeout=30
        )
        assert all(head.startswith(b"HTTP/1.1 200") for head in heads), heads[0]
        return max((await asyncio.to_thread(worker_threads, stack)).values())
    finally:
        for _, writer in connections:
            writer.close()


def test_open_streams_of_the_project_hold_no_thread(adopted: Stack):
    idle = worker_threads(adopted)
    assert len(idle) == 1, idle  # one gunicorn worker (GUNICORN_WORKERS=1 in the test's settings file)
    during = asyncio.run(hold_open_streams(adopted, 100))
    growth = during - max(idle.values())
    print(f"worker threads: {max(idle.values())} idle, {during} with 100 streams open")
    # Django's own handler holds one thread per open stream (100 here); allow a handful.
    assert growth < 15, f"{growth} more threads with 100 of the project's streams open"


def test_the_escape_hatch_stops_the_container(adopted: Stack):
    try:
        result = adopted.compose(
            "run", "--rm", "--no-deps", "-e", "DJANGO_ALLOW_ASYNC_UNSAFE=1", "app", check=False, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the app container kept running with DJANGO_ALLOW_ASYNC_UNSAFE set")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "core.E001" in output and "DJANGO_ALLOW_ASYNC_UNSAFE is set" in output, output[-3000:]


def test_without_tasks_it_serves_and_redeploys(adopted: Stack):
    """The guide's ways to do without background tasks, each followed by `rollout.sh`: its setting for now, then
    the worker service deleted, then the task apps taken out altogether."""
    said = re.search(r"set\s+`(TASK_WORKER_REPLICAS)=(\d+)`\s+in\s+`\.env`", GUIDE.read_text())
    assert said, "docs/adopt.md no longer says how to do without the task worker"
    adopted.write_env({said.group(1): said.group(2)})
    adopted.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=600)
    assert adopted.compose("ps", "--all", "--quiet", "worker").stdout.split() == [], "a worker container is left"
    rollout = adopted.run_script("deploy/compose/rollout.sh")
    assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
    assert "replaced 1 app container(s)" in rollout.stderr, rollout.stderr
    assert adopted.compose("ps", "--all", "--quiet", "worker").stdout.split() == []
    # And with the worker service deleted from the compose file, as the guide's way to go further says.
    worker_service = re.compile(r"^  worker:\n(?:(?:    .*)?\n)*", re.M)
    text, deleted = worker_service.subn("", adopted.compose_file.read_text(), count=1)
    assert deleted == 1
    adopted.compose_file.write_text(text)
    assert "worker" not in adopted.compose("config", "--services").stdout.split()
    rollout = adopted.run_script("deploy/compose/rollout.sh")
    assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
    assert "task worker" not in rollout.stderr, rollout.stderr
    assert adopted.get("/readyz").text().strip() == "ready"
    # And the task apps out altogether: the two apps and TASKS from the settings, and app/worker/.
    said = re.search(r"To take them out\s+altogether, delete (.*?): `core` serves", GUIDE.read_text(), re.S)
    assert said, "docs/adopt.md no longer says how to take the task apps out altogether"
    assert all(f"`{name}`" in said.group(1) for name in ("worker", "TASKS", "app/worker/")), said.group(1)
    settings = adopted.root / "app" / PACKAGE / "settings.py"
    text, deleted = re.subn(r'^    "(django_tasks_db|worker)",\n|^TASKS = .*\n', "", settings.read_text(), flags=re.M)
    assert deleted == 3, f"{settings}: the task apps and TASKS were not where the guide's merge puts them"
    settings.write_text(text)
    shutil.rmtree(adopted.root / "app" / "worker")
    build = adopted.run_script("docker", "compose", "build", "--quiet", "app")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    rollout = adopted.run_script("deploy/compose/rollout.sh")
    assert rollout.returncode == 0, rollout.stdout[-3000:] + rollout.stderr[-3000:]
    assert "replaced 1 app container(s)" in rollout.stderr, rollout.stderr
    apps = "from django.apps import apps; print(sorted(a.label for a in apps.get_app_configs()))"
    installed = adopted.exec("app", "python", "manage.py", "shell", "-c", apps).stdout
    assert "core" in installed and "worker" not in installed and "django_tasks_db" not in installed, installed
    assert adopted.get("/readyz").text().strip() == "ready"
    response = adopted.get("/notes/")
    assert response.status == 200 and NOTE in response.text().splitlines(), response.text()
    # Its metrics still answer, with no queue to report.
    scrape = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
    metrics = adopted.exec("app", "python", "-c", scrape).stdout
    assert "app_requests_total" in metrics and "app_tasks" not in metrics, metrics[-2000:]
