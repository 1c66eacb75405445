"""gunicorn's settings for the app container: every value from the environment.

Read by: gunicorn, started by the Dockerfile's CMD (`gunicorn -c /srv/deploy/gunicorn/gunicorn.conf.py`).
Copying it: keep it beside workers.py; set the variables in .env (documented in
.env.example), not here. Settings reference: https://gunicorn.org/reference/settings/
"""

import ipaddress
import os
import shutil
import sys
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"gunicorn.conf.py: {name} must be a whole number, not {raw!r}") from None


# --- What to serve ----------------------------------------------------------------
chdir = "/srv/app"
sys.path.insert(0, chdir)  # for core, before gunicorn applies pythonpath below
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from core import sizing  # noqa: E402  (plain Python)
from core.env import metrics_port as _metrics_port  # noqa: E402  (Django itself is not loaded here)

# The project's package: the first part of the settings module the image names
# (Dockerfile: config.settings here, mysite.settings in a project of your own,
# docs/adopt.md). gunicorn serves its asgi.py; nothing in this file names the
# package, so it copies as is.
_project = os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings").partition(".")[0]
wsgi_app = f"{_project}.asgi:application"
# workers.py, and the app for its log format (core.jsonlog), before Django loads.
pythonpath = f"{Path(__file__).resolve().parent},{chdir}"
worker_class = "workers.UvicornWorker"
# Each worker is one event loop: one per CPU the container may use (its
# `cpus` limit, APP_CPUS in docker-compose.yml), never the host's cores;
# GUNICORN_WORKERS sets the count instead. docs/operations.md, "Sizing".
try:
    workers = sizing.worker_count()
except ValueError as error:
    raise SystemExit(f"gunicorn.conf.py: {error}") from None

# --- Where --------------------------------------------------------------------------
# $PORT is what container hosts (Cloud Run, Render, Heroku-style) hand the app.
bind = [f"0.0.0.0:{_int('PORT', 8000)}"]
# Connections the kernel queues before a worker accepts them: a burst of new
# streams or a reconnecting crowd waits here instead of being refused. The
# kernel caps it at net.core.somaxconn (4096 on current kernels).
backlog = _int("GUNICORN_BACKLOG", 4096)
# Proxy headers are believed only from these addresses (nginx's network in
# docker-compose.yml); nginx overwrites X-Forwarded-For and -Proto itself.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"


def attached_networks(route_table: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this container has an address on: the routes of /proc/net/route without a gateway."""
    networks = []
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or int(fields[2], 16) != 0:  # reached through a gateway
            continue
        address, mask = (ipaddress.IPv4Address(bytes.fromhex(field)[::-1]) for field in (fields[1], fields[7]))
        networks.append(ipaddress.IPv4Network(f"{address}/{mask}"))
    return networks


def unattached_proxy_ranges(allowed: str, attached: list[ipaddress.IPv4Network]) -> list[str]:
    """`allowed`'s IPv4 ranges when none is on an attached network; [] if one is, or for loopback, "*" or no routes."""
    try:
        ranges = [ipaddress.ip_network(entry.strip(), strict=False) for entry in allowed.split(",") if entry.strip()]
    except ValueError:  # "*", or a form gunicorn reads its own way
        return []
    outside = [network for network in ranges if network.version == 4 and not network.is_loopback]
    if not attached or not outside or any(network.overlaps(own) for network in outside for own in attached):
        return []
    return [str(network) for network in outside]


# --- Timeouts -------------------------------------------------------------------------
# How long an idle client connection stays open. Whatever keeps connections
# to the app open between requests must close them first, or it reuses one
# gunicorn just closed and answers 502: the nginx here does so 15 s sooner by
# itself (nginx/upstream/app-upstream); a load balancer or ingress in front of
# the app needs an idle timeout below this (60 s is common).
keepalive = _int("GUNICORN_KEEPALIVE", 75)
# A worker whose event loop stops answering this long is killed and replaced.
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, requests in flight get this long (open streams end 2 s before:
# workers.py), then the arbiter kills what is left and exits.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 20)
# The rule, stated and enforced here: the platform's grace period for a
# stopping container, APP_STOP_GRACE (compose's stop_grace_period reads it),
# outlasts the drain by STOP_MARGIN seconds for the arbiter to finish, or the
# platform's SIGKILL cuts requests in flight short. Other hosts' grace periods
# are checked against the same sum by tests/test_manifests.py.
STOP_MARGIN = 2
_stop_grace = _int("APP_STOP_GRACE", 30)
if graceful_timeout + STOP_MARGIN > _stop_grace:
    raise SystemExit(
        f"gunicorn.conf.py: GUNICORN_GRACEFUL_TIMEOUT ({graceful_timeout} s) must end at least {STOP_MARGIN} s "
        f"before APP_STOP_GRACE ({_stop_grace} s), the platform's grace period: lower the one or raise the other"
    )
# Recycle workers after this many requests (0: never), jittered so they do
# not all restart at once.
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 0)

# --- Logs: JSON lines, the format Django's use too (app/core/jsonlog.py) -----------------
# The app's own access line per request: off by default. nginx writes one
# for every request, with the same request id, and the app's JSON line cost
# a fifth of the throughput of a plain view (docs/performance.md). "-" turns
# it on (stdout): where nothing in front of the app logs requests.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "core.jsonlog.JsonFormatter"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"},
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"},
    },
    # Replaces gunicorn's defaults whole, root logger included.
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
        # One line per request, the Uvicorn workers' included, when GUNICORN_ACCESS_LOG is "-".
        "gunicorn.access": {"handlers": ["stdout"] if accesslog else [], "level": "INFO", "propagate": False},
    },
}

# --- Metrics (app/core/metrics.py) ------------------------------------------------------------
# A second port for Prometheus: nginx proxies only the first, so /metrics is
# reachable inside the container network and nowhere else. Empty: no metrics
# port. Django reads the same variable the same way (settings.METRICS_PORT).
try:
    metrics_port = _metrics_port()
except ImproperlyConfigured as error:
    raise SystemExit(f"gunicorn.conf.py: {error}") from None
if metrics_port:
    bind.append(f"0.0.0.0:{metrics_port}")
    # Where the workers leave their numbers for each other; in memory, wiped at start.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/dev/shm/metrics")  # noqa: S108  (private to the container)


def on_starting(server: object) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
    # Older compose releases (2.26, for one) keep a network they have created as it was: an edge network made before
    # EDGE_SUBNET changed keeps its old range, and gunicorn would believe proxy headers from no one there.
    try:
        routes = Path("/proc/net/route").read_text()
    except OSError:
        routes = ""
    attached = attached_networks(routes)
    unattached = unattached_proxy_ranges(forwarded_allow_ips, attached)
    if unattached:
        server.log.warning(  # type: ignore[attr-defined]
            "FORWARDED_ALLOW_IPS (%s) is on none of this container's networks (%s): X-Forwarded-For and -Proto "
            "will be ignored unless the proxy reaches the app through a router or NAT. Under docker compose, "
            "the edge network kept an older EDGE_SUBNET: `docker compose down`, then `up`, creates it anew.",
            ", ".join(unattached),
            ", ".join(map(str, attached)),
        )


def child_exit(server: object, worker: object) -> None:
    # A dead worker's gauges must not count any more; its counters still do.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# --- A read-only root filesystem ----------------------------------------------------------
# The heartbeat files go to memory, not to the image's /tmp.
worker_tmp_dir = "/dev/shm"  # noqa: S108  (private to the container)
# The control socket (gunicornc) would need a writable $HOME.
control_socket_disable = True
