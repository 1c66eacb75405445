"""The scripts the containers run: init_secrets (compose), the gunicorn config and its worker."""

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

DEPLOY = Path("/srv/deploy")


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def init_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    for name in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return load(DEPLOY / "app" / "init_secrets.py")


def test_secrets_generated_once_and_kept(init_secrets, tmp_path, capsys):
    assert init_secrets.main() == 0
    key = (tmp_path / "django_secret_key").read_text()
    password = (tmp_path / "postgres_password").read_text()
    assert len(key.strip()) >= 50 and len(password.strip()) >= 50 and key != password
    assert (tmp_path / "api_token").read_text() == "\n"
    assert init_secrets.main() == 0
    assert (tmp_path / "django_secret_key").read_text() == key
    assert (tmp_path / "postgres_password").read_text() == password
    out = capsys.readouterr().out
    assert key.strip() not in out and password.strip() not in out


def test_secrets_given_in_the_environment_win(init_secrets, tmp_path, monkeypatch, capsys):
    assert init_secrets.main() == 0
    monkeypatch.setenv("DJANGO_SECRET_KEY", "from-env-key")
    monkeypatch.setenv("API_TOKEN", "from-env-token")
    assert init_secrets.main() == 0
    assert (tmp_path / "django_secret_key").read_text() == "from-env-key\n"
    assert (tmp_path / "api_token").read_text() == "from-env-token\n"
    assert "from-env" not in capsys.readouterr().out


def test_secrets_without_a_volume(init_secrets, monkeypatch, tmp_path):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "missing"))
    assert init_secrets.main() == 1


@pytest.fixture(autouse=True)
def restore_environment():
    # gunicorn.conf.py exports variables for the workers (METRICS_PORT, ...):
    # keep them from leaking into the other tests.
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
        FORWARDED_ALLOW_IPS="172.30.80.0/24",
    )
    assert conf.workers == 3
    assert conf.bind == ["0.0.0.0:8080", "0.0.0.0:9100"]  # the app, then metrics
    assert conf.graceful_timeout == 12
    assert conf.forwarded_allow_ips == "172.30.80.0/24"
    assert conf.worker_class == "workers.UvicornWorker"
    assert conf.keepalive > 60  # outlasts a load balancer's usual idle timeout (60 s)


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
    cfg.set("forwarded_allow_ips", "172.30.80.0/24")
    worker = UvicornWorker(age=1, ppid=os.getpid(), sockets=[], app=None, timeout=30, cfg=cfg, log=Logger(cfg))
    config = worker.config
    assert (config.loop, config.http, config.lifespan) == ("uvloop", HttpToolsOneWriteProtocol, "off")
    assert issubclass(config.http, HttpToolsProtocol)  # httptools, one write per response
    assert config.timeout_graceful_shutdown == 18
    assert config.timeout_keep_alive == 75
    assert config.server_header is False
    assert config.reset_contextvars is True
    assert config.forwarded_allow_ips == ["172.30.80.0/24"]
