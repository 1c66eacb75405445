"""The Uvicorn worker gunicorn runs: uvicorn_worker.UvicornWorker, finished.

uvicorn_worker passes gunicorn's keep-alive, timeout and backlog on to uvicorn,
but not its graceful timeout, and it leaves uvicorn to guess the event loop,
the HTTP parser and lifespan. This subclass says all of them:

- uvloop and httptools, the fast paths (installed from requirements/app.txt);
  "auto" would fall back silently to asyncio and h11 if either went missing.
- lifespan off: Django has no lifespan support, so "auto" would log an
  ASGI lifespan error at every worker start.
- a bounded graceful shutdown: on SIGTERM, uvicorn stops accepting, lets
  requests in flight finish, and cancels what is still open (SSE streams) two
  seconds before gunicorn's graceful_timeout, when the arbiter would SIGKILL.
- no Server header.

https://github.com/Kludex/uvicorn-worker and https://www.uvicorn.org/settings/
"""

from typing import Any

from uvicorn_worker import UvicornWorker as BaseUvicornWorker

# Time left between uvicorn cancelling open connections and gunicorn's kill.
SHUTDOWN_MARGIN_SECONDS = 2


class UvicornWorker(BaseUvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
        "server_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - SHUTDOWN_MARGIN_SECONDS)
