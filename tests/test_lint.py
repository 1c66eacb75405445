"""Linters over the whole repository: ruff, hadolint, docker compose config, nginx -t,
and actionlint and zizmor over the CI workflow and the Dependabot config in .github/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.stack import ROOT, Stack

BIN = Path(sys.executable).parent
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint():
    result = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint():
    result = run(str(BIN / "hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_is_valid(stack: Stack):
    for with_tests in (False, True):
        stack.compose("config", "--quiet", with_tests=with_tests)
    # The README's plain `docker compose up`: no .env, no variables.
    result = run("docker", "compose", "--env-file", "/dev/null", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_nginx_config_is_valid(stack: Stack):
    # The image's entrypoint renders the template, then nginx checks the result.
    result = run(
        "docker", "run", "--rm", "-e", "NGINX_UPSTREAM=127.0.0.1:8000", "-e", "NGINX_TRUSTED_PROXY=10.0.0.0/8",
        stack.image("nginx"), "nginx", "-t",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test is successful" in result.stderr


def test_actionlint():
    # Syntax, expressions, runner labels, and the `run:` scripts through ShellCheck (installed beside it).
    assert WORKFLOWS, "no workflow in .github/workflows"
    shellcheck = f"-shellcheck={BIN / 'shellcheck'}"
    result = run(str(BIN / "actionlint"), shellcheck, *(str(path.relative_to(ROOT)) for path in WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor():
    # Offline: pinning, permissions, credentials, injection, the Dependabot cooldown. A file
    # that does not match its schema (a misspelt key or ecosystem) fails, not just warns.
    result = run(str(BIN / "zizmor"), "--offline", "--strict-collection", "--no-progress", "--color=never", ".github/")
    assert result.returncode == 0, result.stdout + result.stderr
    audited = set(re.findall(r"completed (\S+)", result.stderr))
    expected = {str(path.relative_to(ROOT)) for path in [*WORKFLOWS, GITHUB / "dependabot.yml"]}
    assert expected <= audited, f"zizmor audited {sorted(audited)}, not all of {sorted(expected)}"


def readme_test_command() -> str:
    """The command in the README's "Test it" section: its first shell block."""
    section = (ROOT / "README.md").read_text().split("\n## Test it\n", 1)[1]
    block = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert block, "README: no sh block under '## Test it'"
    return block.group(1).strip()


def load_workflow(path: Path) -> dict[Any, Any]:
    workflow = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def test_workflow_runs_the_readme_test_command():
    command = readme_test_command()
    runs = []
    for path in WORKFLOWS:
        for job in load_workflow(path)["jobs"].values():
            runs += [step["run"].strip() for step in job.get("steps", []) if "run" in step]
    assert command in runs, f"no workflow step runs the README's test command {command!r}; runs: {runs}"


def test_workflow_is_safe_to_copy():
    for path in WORKFLOWS:
        workflow = load_workflow(path)
        assert {"push", "pull_request", "workflow_dispatch"} <= set(workflow["on"]), path
        assert workflow["permissions"] == {"contents": "read"}, path
        assert "concurrency" in workflow, path
        for name, job in workflow["jobs"].items():
            assert isinstance(job.get("timeout-minutes"), int), f"{path}: job {name} has no timeout-minutes"
            assert "permissions" not in job, f"{path}: job {name} widens the workflow's permissions"
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, f"{path}: {step}"
        # Each action pinned by its full commit, the release in a comment beside it: Dependabot moves both.
        for line in path.read_text().splitlines():
            if uses := re.match(r"\s*(?:- )?uses:\s*(\S+)(.*)", line):
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses.group(1)), f"{path}: {line.strip()}"
                assert re.fullmatch(r"\s+# v\d+(\.\d+)*", uses.group(2)), f"{path}: {line.strip()}"


def registry_images(dockerfile: str) -> list[str]:
    """The images the Dockerfile's FROM lines name, less its own stages."""
    stages: set[str] = set()
    images = []
    for image, stage in re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I):
        if image not in stages:
            images.append(image)
        stages.add(stage)
    return images


def test_dependabot_covers_every_kind_of_dependency():
    config = yaml.safe_load((GITHUB / "dependabot.yml").read_text())
    assert config["version"] == 2
    entries = {(entry["package-ecosystem"], entry.get("directory")): entry for entry in config["updates"]}
    wanted = set()
    # The lock files: Dependabot's `uv` recompiles those `uv pip compile` wrote, `pip` the others.
    locks = sorted((ROOT / "requirements").glob("*.txt"))
    assert locks
    for lock in locks:
        wanted.add(("uv" if "autogenerated by uv" in lock.read_text() else "pip", "/requirements"))
    # The base images, which Dependabot reads only from a literal FROM line (no ${ARG}).
    images = registry_images((ROOT / "Dockerfile").read_text())
    assert images and all(re.fullmatch(r"[a-z0-9./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", i) for i in images), images
    wanted.add(("docker", "/"))
    # Images in docker-compose.yml that come from a registry, not from this Dockerfile (`:local`).
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"].values()
    if any(not service["image"].endswith(":local") for service in services if "image" in service):
        wanted.add(("docker-compose", "/"))
    if WORKFLOWS:
        wanted.add(("github-actions", "/"))
    assert wanted <= set(entries), f"dependabot.yml has no entry for {sorted(wanted - set(entries))}"
    for key, entry in entries.items():
        assert entry["schedule"]["interval"] == "weekly", key
        assert entry["cooldown"]["default-days"] >= 7, key
