"""The development loop (deploy/compose/dev.yml): DEBUG on, code reload, same Postgres; production untouched."""

from __future__ import annotations

import shutil
import time

import pytest

from harness.stack import ROOT, Stack


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory):
    source = tmp_path_factory.mktemp("dev") / "app"
    shutil.copytree(ROOT / "app", source, ignore=shutil.ignore_patterns("__pycache__"))
    source.chmod(0o755)
    stack = Stack(project="async-django-dev-test", edge_subnet="10.130.83.0/24",
                  extra_files=[ROOT / "deploy" / "compose" / "dev.yml"])  # fmt: skip
    stack.write_env({"DEV_APP_DIR": str(source), "DEV_APP_PORT": "0"})
    stack.compose("down", "--volumes", "--remove-orphans", check=False)
    try:
        stack.up()
        yield stack, source
    finally:
        stack.down()


def test_debug_is_on(dev_stack):
    stack, _ = dev_stack
    page = stack.get("/no-such-page/")
    assert page.status == 404
    assert "URLconf" in page.text()  # Django's technical 404 page, shown only with DEBUG


def test_code_changes_are_picked_up_without_a_restart(dev_stack):
    stack, source = dev_stack
    views = source / "books" / "views.py"
    marker = f"reloaded-{int(time.time())}"
    views.write_text(views.read_text().replace("It is now %s.", f"It is now %s. {marker}"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = stack.get("/now/")
        if response.status == 200 and marker in response.text():
            break
        time.sleep(1)
    assert marker in stack.get("/now/").text()
    assert "Booting worker" in stack.logs("app")


def test_same_database(dev_stack):
    stack, _ = dev_stack
    created = stack.post_json("/books/", {"title": "From the dev loop"}, token=stack.api_token)
    assert created.status == 201
    assert "From the dev loop" in stack.get("/books/").text()


def test_production_configuration_is_untouched():
    for text in ((ROOT / "docker-compose.yml").read_text(), (ROOT / ".env.example").read_text()):
        assert "--reload" not in text
        assert "DJANGO_DEBUG=true" not in text.replace(" ", "").lower().replace("django_debug", "DJANGO_DEBUG")
