"""Settings files: whatever file compose is given (.env, or --env-file prod.env) reaches every service, whole.

docker compose reads one settings file for ${...} in docker-compose.yml; the
app and migrate containers get the variables that file names through
x-app-environment, and secrets come as files. Checked with compose's own
rendering (`docker compose config`), and on the running stack, which the
tests start with --env-file and a file not called .env.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from harness.stack import ROOT, Stack, docker
from tests.hosts import read_by_the_image, registry

# Set by docker-compose.yml itself, never taken from the settings file.
WIRED = {"PORT", "FORWARDED_ALLOW_IPS"}


def rendered(env_file: Path, project_dir: Path = ROOT) -> dict:
    result = docker("compose", "--project-directory", str(project_dir), "-f", str(ROOT / "docker-compose.yml"),
                    "--env-file", str(env_file), "config", "--format", "json")  # fmt: skip
    return json.loads(result.stdout)


@pytest.fixture
def prod_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A prod.env that sets every documented variable to a value of its own, and gives each secret as a file."""
    documented = registry()
    secret = {name for name, var in documented.items() if var.secret}
    # The example's own values for what compose itself uses (ports, limits: typed,
    # APP_REPLICAS too), a value of its own for each other variable the app reads.
    example = (ROOT / ".env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    compose = (ROOT / "docker-compose.yml").read_text()
    values |= {
        name: f"from-prod-env-{name.lower()}"
        for name in read_by_the_image()
        if name not in secret and f"${{{name}:" not in compose
    }
    values |= {"EDGE_SUBNET": "172.16.99.0/24"}
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    for name in secret:
        (secret_dir / name.lower()).write_text(f"value-of-{name.lower()}\n")
        values[f"{name}_FILE"] = str(secret_dir / name.lower())
    path = tmp_path / "prod.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


def test_every_variable_of_the_named_file_reaches_the_app_and_migrate(prod_env, tmp_path):
    path, values = prod_env
    # A .env beside the compose file, with other values, must not be read instead.
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("".join(f"{k}=from-dotenv\n" for k in values))
    config = rendered(path, project)
    expected = {name for name in read_by_the_image() if name in values} - WIRED
    assert {"POSTGRES_HOST", "DJANGO_ALLOWED_HOSTS", "DB_POOL_MAX_SIZE"} <= expected
    for service in ("app", "migrate"):
        env = config["services"][service]["environment"]
        wrong = {name: env.get(name) for name in expected if env.get(name) != values[name]}
        assert not wrong, f"{service}: not as prod.env says: {wrong}"
        assert env["FORWARDED_ALLOW_IPS"] == values["EDGE_SUBNET"]
    nginx = config["services"]["nginx"]["environment"]
    assert nginx["NGINX_TRUSTED_PROXY"] == values["NGINX_TRUSTED_PROXY"]
    # Secrets: as files, mounted into the secrets step, never a value in the configuration.
    assert {name: s["file"] for name, s in config["secrets"].items()} == {
        name.lower(): values[f"{name}_FILE"] for name in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "API_TOKEN")
    }
    assert "value-of-" not in json.dumps(config)
    assert config["services"]["secrets"]["environment"]["SECRETS_GIVEN_AS_VALUES"] == ""


def test_a_secret_given_as_a_value_is_named_to_the_secrets_step(tmp_path):
    path = tmp_path / "prod.env"
    path.write_text("API_TOKEN=oops-a-plain-value\nDJANGO_DEBUG=false\n")
    config = rendered(path)
    # Its name only; the step refuses to start the stack (deploy/app/init_secrets.py).
    assert config["services"]["secrets"]["environment"]["SECRETS_GIVEN_AS_VALUES"].split() == ["API_TOKEN"]
    assert "oops-a-plain-value" not in json.dumps(config)


def test_without_a_settings_file_nothing_is_set_but_the_wiring(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = rendered(empty)["services"]["app"]["environment"]
    assert {k: v for k, v in env.items() if v is not None} == {
        "POSTGRES_HOST": "db",
        "POSTGRES_DB": "app",
        "POSTGRES_USER": "app",
        "DJANGO_SECRET_KEY_FILE": "/srv/secrets/django_secret_key",
        "POSTGRES_PASSWORD_FILE": "/srv/secrets/postgres_password",
        "API_TOKEN_FILE": "/srv/secrets/api_token",
        "FORWARDED_ALLOW_IPS": "172.16.80.0/24",
    }


# The ranges Docker takes a network's from when none is given (daemon.json's
# default-address-pools unset): moby's libnetwork/ipamutils, local scope.
DOCKER_DEFAULT_POOLS = [ipaddress.ip_network(f"172.{n}.0.0/16") for n in range(17, 32)] + [
    ipaddress.ip_network("192.168.0.0/16")
]


def test_the_edge_range_is_one_docker_never_picks_by_itself(tmp_path):
    """EDGE_SUBNET's default, and the guide's for a second stack, lie outside Docker's default pools.

    Compose creates the stack's networks in no fixed order: inside a pool, the
    `data` network (or any network made without a range) could take the /16
    holding the edge range first, and `up` would fail with "Pool overlaps".
    """
    empty = tmp_path / "empty.env"
    empty.write_text("")
    compose_default = rendered(empty)["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    example = dict(re.findall(r"^(EDGE_SUBNET|NGINX_TRUSTED_PROXY)=(.+)$", (ROOT / ".env.example").read_text(), re.M))
    second = re.findall(r"^EDGE_SUBNET=(.+)$", (ROOT / "docs" / "adopt.md").read_text(), re.M)
    assert compose_default == example["EDGE_SUBNET"] and len(second) == 1
    edge, other = ipaddress.ip_network(compose_default), ipaddress.ip_network(second[0])
    for subnet in (edge, other):
        assert not [pool for pool in DOCKER_DEFAULT_POOLS if subnet.overlaps(pool)], subnet
    assert not edge.overlaps(other)
    # A TLS proxy on the host reaches nginx from the edge network's gateway: its first address.
    assert ipaddress.ip_address(example["NGINX_TRUSTED_PROXY"]) == edge.network_address + 1


def test_an_edge_range_changed_after_up_is_said_at_start(stack: Stack):
    """EDGE_SUBNET changed, then `up` again: a compose without docker/compose#12267 keeps the network with its old
    range, and gunicorn in the new app container says so, naming the fix, rather than believe proxy headers from
    nowhere; a compose that recreates the network leaves nothing to say."""
    with stack.sibling("subnet", 112, {}).running() as other:
        network = f"{other.project}_edge"
        assert subnets(network) == [other.edge_subnet]
        assert "FORWARDED_ALLOW_IPS" not in other.logs("app")
        moved = str(ipaddress.ip_network(other.edge_subnet).network_address + 256) + "/24"
        other.write_env({"EDGE_SUBNET": moved})
        other.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=600)
        now, logs = subnets(network), other.logs("app")
        if now == [moved]:  # recreated
            assert "FORWARDED_ALLOW_IPS" not in logs, logs[-3000:]
        else:
            assert now == [other.edge_subnet]
            assert f"FORWARDED_ALLOW_IPS ({moved}) is on none of this container's networks" in logs, logs[-3000:]
            assert "docker compose down" in logs


def subnets(network: str) -> list[str]:
    configs = json.loads(docker("network", "inspect", network, "--format", "{{json .IPAM.Config}}").stdout)
    return [config["Subnet"] for config in configs]


def test_the_running_stack_got_its_settings_file(stack: Stack):
    """The test stack starts with --env-file and a file called stack.env: its settings are in force."""
    assert stack.env_file.name != ".env"
    env = dict(line.split("=", 1) for line in stack.exec("app", "env").stdout.splitlines() if "=" in line)
    assert env["GUNICORN_WORKERS"] == "1" and env["GUNICORN_ACCESS_LOG"] == "-"
    assert len(stack.gunicorn_workers()) == 1
    # Its edge network has the range gunicorn believes proxy headers from (gunicorn.conf.py warns otherwise).
    assert "FORWARDED_ALLOW_IPS" not in stack.logs("app")
    # The API token, given as a file: writes work.
    created = stack.post_json("/books/", {"title": "from the env file's token"}, token=stack.api_token)
    assert created.status == 201, created.body
    assert "API_TOKEN" not in env
