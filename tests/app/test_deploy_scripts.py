"""The scripts the containers run: init_secrets (compose), the gunicorn config and its worker."""

import importlib.util
import ipaddress
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

DEPLOY = Path("/srv/deploy")


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def given(tmp_path) -> Path:
    """Where compose mounts the files given as NAME_FILE (GIVEN_DIR)."""
    directory = tmp_path / "given"
    directory.mkdir()
    return directory


@pytest.fixture
def volume(tmp_path) -> Path:
    directory = tmp_path / "volume"
    directory.mkdir()
    return directory


@pytest.fixture
def init_secrets(monkeypatch, given, volume):
    monkeypatch.setenv("SECRETS_DIR", str(volume))
    monkeypatch.setenv("GIVEN_DIR", str(given))
    monkeypatch.delenv("SECRETS_GIVEN_AS_VALUES", raising=False)
    return load(DEPLOY / "app" / "init_secrets.py")


def test_secrets_generated_once_and_kept(init_secrets, volume, capsys):
    assert init_secrets.main() == 0
    key = (volume / "django_secret_key").read_text()
    password = (volume / "postgres_password").read_text()
    assert len(key.strip()) >= 50 and len(password.strip()) >= 50 and key != password
    assert (volume / "api_token").read_text() == "\n"
    assert init_secrets.main() == 0
    assert (volume / "django_secret_key").read_text() == key
    assert (volume / "postgres_password").read_text() == password
    out = capsys.readouterr().out
    assert key.strip() not in out and password.strip() not in out


def test_secrets_given_as_files_win(init_secrets, given, volume, capsys):
    assert init_secrets.main() == 0
    (given / "django_secret_key").write_text("from-file-key\n")
    (given / "api_token").write_text("from-file-token")
    # What compose mounts for a secret nobody named: /dev/null, empty.
    os.symlink("/dev/null", given / "postgres_password")
    password = (volume / "postgres_password").read_text()
    assert init_secrets.main() == 0
    assert (volume / "django_secret_key").read_text() == "from-file-key\n"
    assert (volume / "api_token").read_text() == "from-file-token\n"
    assert (volume / "postgres_password").read_text() == password  # kept
    assert "from-file" not in capsys.readouterr().out


def test_secrets_given_as_values_are_refused_and_nothing_changes(init_secrets, volume, monkeypatch, capsys):
    assert init_secrets.main() == 0
    before = {f.name: f.read_text() for f in volume.iterdir()}
    monkeypatch.setenv("SECRETS_GIVEN_AS_VALUES", "DJANGO_SECRET_KEY API_TOKEN ")
    assert init_secrets.main() == 1
    err = capsys.readouterr().err
    assert "DJANGO_SECRET_KEY is set as a value" in err and "API_TOKEN_FILE" in err
    assert {f.name: f.read_text() for f in volume.iterdir()} == before


def test_an_unreadable_given_file_is_a_clear_error(init_secrets, given, volume):
    secret = given / "api_token"
    secret.write_text("token")
    secret.chmod(0o000)
    if os.access(secret, os.R_OK):
        pytest.skip("running as root: every file is readable")
    with pytest.raises(SystemExit, match="chmod 644"):
        init_secrets.main()


def test_secrets_without_a_volume(init_secrets, monkeypatch, tmp_path):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "missing"))
    assert init_secrets.main() == 1


@pytest.fixture(autouse=True)
def restore_environment():
    # gunicorn.conf.py exports PROMETHEUS_MULTIPROC_DIR for the workers: keep it
    # from leaking into the other tests.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def load_gunicorn_conf(monkeypatch, **env: str) -> ModuleType:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load(DEPLOY / "gunicorn" / "gunicorn.conf.py")


def test_gunicorn_conf_reads_the_environment(monkeypatch):
    conf = load_gunicorn_conf(
        monkeypatch,
        GUNICORN_WORKERS="3",
        PORT="8080",
        GUNICORN_GRACEFUL_TIMEOUT="12",
        FORWARDED_ALLOW_IPS="172.16.80.0/24",
    )
    assert conf.workers == 3
    assert conf.bind == ["0.0.0.0:8080", "0.0.0.0:9100"]  # the app, then metrics
    assert conf.graceful_timeout == 12
    assert conf.forwarded_allow_ips == "172.16.80.0/24"
    assert conf.worker_class == "workers.UvicornWorker"
    assert conf.keepalive > 60  # outlasts a load balancer's usual idle timeout (60 s)


def test_gunicorn_warns_when_the_proxy_range_is_on_none_of_this_containers_networks(monkeypatch):
    """An edge network compose kept from an older EDGE_SUBNET: said at start, not left to wrong client addresses."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    conf = load_gunicorn_conf(monkeypatch)
    attached = conf.attached_networks(Path("/proc/net/route").read_text())
    assert attached, "this container is on the stack's data network"
    own = str(attached[0])
    elsewhere = next(
        str(network)
        for network in map(ipaddress.ip_network, ("172.16.99.0/24", "10.250.0.0/24"))
        if not any(network.overlaps(mine) for mine in attached)
    )
    for believed in (own, f"{elsewhere},{own}", "127.0.0.1,::1", "*"):
        assert conf.unattached_proxy_ranges(believed, attached) == [], believed
    assert conf.unattached_proxy_ranges(elsewhere, attached) == [elsewhere]
    assert conf.unattached_proxy_ranges(elsewhere, []) == []  # no routes read: nothing to say

    class Log:
        def __init__(self) -> None:
            self.warnings: list[str] = []

        def warning(self, message: str, *args: object) -> None:
            self.warnings.append(message % args)

    for believed, warned in ((own, False), (elsewhere, True)):
        server = SimpleNamespace(log=Log())
        load_gunicorn_conf(monkeypatch, FORWARDED_ALLOW_IPS=believed).on_starting(server)
        assert bool(server.log.warnings) is warned, server.log.warnings
    assert elsewhere in server.log.warnings[0] and own in server.log.warnings[0]
    assert "docker compose down" in server.log.warnings[0]


def test_gunicorn_conf_defaults(monkeypatch):
    for name in ("GUNICORN_WORKERS", "PORT", "FORWARDED_ALLOW_IPS", "METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    conf = load_gunicorn_conf(monkeypatch)
    assert conf.workers >= 1
    assert conf.bind == ["0.0.0.0:8000", "0.0.0.0:9100"]
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == "/dev/shm/metrics"


def test_gunicorn_conf_without_metrics(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    conf = load_gunicorn_conf(monkeypatch, METRICS_PORT="")
    assert conf.bind == ["0.0.0.0:8000"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert conf.forwarded_allow_ips == "127.0.0.1,::1"


def test_gunicorn_conf_reads_the_metrics_port_as_django_does(monkeypatch):
    from django.conf import settings

    for name in ("METRICS_PORT", "PORT"):
        monkeypatch.delenv(name, raising=False)
    conf = load_gunicorn_conf(monkeypatch)
    # One default, in core.env: gunicorn binds the port settings.METRICS_PORT names, and tells nobody.
    assert conf.bind[-1] == f"0.0.0.0:{settings.METRICS_PORT}"
    assert "METRICS_PORT" not in os.environ
    conf = load_gunicorn_conf(monkeypatch, METRICS_PORT="9200")
    assert conf.bind == ["0.0.0.0:8000", "0.0.0.0:9200"]
    with pytest.raises(SystemExit, match="METRICS_PORT must be a port number"):
        load_gunicorn_conf(monkeypatch, METRICS_PORT="metrics")


def test_gunicorn_conf_refuses_a_drain_longer_than_the_platforms_grace(monkeypatch):
    monkeypatch.delenv("APP_STOP_GRACE", raising=False)
    assert load_gunicorn_conf(monkeypatch, GUNICORN_GRACEFUL_TIMEOUT="28").graceful_timeout == 28
    with pytest.raises(
        SystemExit, match=r"GUNICORN_GRACEFUL_TIMEOUT \(29 s\) must end at least 2 s before APP_STOP_GRACE \(30 s\)"
    ):
        load_gunicorn_conf(monkeypatch, GUNICORN_GRACEFUL_TIMEOUT="29")
    assert load_gunicorn_conf(monkeypatch, GUNICORN_GRACEFUL_TIMEOUT="58", APP_STOP_GRACE="60").graceful_timeout == 58


def test_gunicorn_conf_rejects_a_bad_number(monkeypatch):
    with pytest.raises(SystemExit, match="GUNICORN_WORKERS must be a whole number, not 'many'"):
        load_gunicorn_conf(monkeypatch, GUNICORN_WORKERS="many")


def test_worker_passes_on_what_uvicorn_worker_does_not(monkeypatch):
    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from protocol import HttpToolsOneWriteProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from workers import UvicornWorker

    cfg = Config()
    cfg.set("graceful_timeout", 20)
    cfg.set("keepalive", 75)
    cfg.set("forwarded_allow_ips", "172.16.80.0/24")
    worker = UvicornWorker(age=1, ppid=os.getpid(), sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg))
    config = worker.config
    assert (config.loop, config.http, config.lifespan) == ("uvloop", HttpToolsOneWriteProtocol, "off")
    assert issubclass(config.http, HttpToolsProtocol)  # httptools, one write per response
    assert config.timeout_graceful_shutdown == 18
    assert config.timeout_keep_alive == 75
    assert config.server_header is False
    assert config.reset_contextvars is True
    assert config.forwarded_allow_ips == ["172.16.80.0/24"]
