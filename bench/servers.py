"""The servers the benchmark races: the same app image, the same worker count, the same nginx."""

from __future__ import annotations

from dataclasses import dataclass

CONF = "/srv/deploy/gunicorn/gunicorn.conf.py"


@dataclass(frozen=True)
class Server:
    name: str
    description: str
    command: str  # {workers} is replaced by the worker count
    skips: frozenset[str] = frozenset()  # workloads this server has no route for
    env: tuple[tuple[str, str], ...] = ()  # settings of the app container for this server

    def app_command(self, workers: int) -> str:
        return self.command.format(workers=workers, conf=CONF)


SERVERS = [
    Server("blueprint", "gunicorn + the project's Uvicorn worker (core.handlers)", "gunicorn -c {conf}"),
    Server(
        "gthread",
        "gunicorn gthread, WSGI, 8 threads per worker",
        "gunicorn -c {conf} --worker-class gthread --threads 8 config.wsgi:application",
    ),
    Server(
        "gunicorn-asgi",
        "gunicorn's native ASGI worker (-k asgi)",
        "gunicorn -c {conf} --worker-class asgi --asgi-loop uvloop --asgi-lifespan off config.asgi:application",
    ),
    Server(
        "uvicorn",
        "uvicorn --workers",
        "uvicorn config.asgi:application --host 0.0.0.0 --port 8000 --workers {workers} "
        "--loop uvloop --http httptools --lifespan off --proxy-headers",
    ),
    Server(
        "granian",
        "granian, ASGI interface",
        "granian --interface asgi --host 0.0.0.0 --port 8000 --workers {workers} --loop uvloop --no-ws "
        "config.asgi:application",
    ),
    Server(
        "daphne",
        "daphne (one process: it has no worker option)",
        "daphne --bind 0.0.0.0 --port 8000 --proxy-headers config.asgi:application",
    ),
    Server(
        "django-stock",
        "the blueprint's server with Django's own ASGI handler and middleware (a thread per request)",
        "gunicorn -c {conf}",
        env=(("DJANGO_STOCK_HANDLER", "true"),),
    ),
    Server(
        "raw-asgi",
        "the blueprint's server with a bare ASGI app, no Django (the floor)",
        "gunicorn -c {conf} --chdir /srv/bench raw_asgi:app",
        skips=frozenset({"books"}),
    ),
]

BY_NAME = {server.name: server for server in SERVERS}
