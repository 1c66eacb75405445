"""The Uvicorn worker gunicorn runs: uvicorn_worker.UvicornWorker, finished.

uvicorn_worker passes gunicorn's keep-alive, timeout and backlog on to uvicorn,
but not its graceful timeout, and it leaves uvicorn to guess the event loop,
the HTTP parser and lifespan. This subclass says all of them:

- uvloop and httptools, the fast paths (installed from requirements/app.txt);
  "auto" would fall back silently to asyncio and h11 if either went missing.
  The httptools protocol is protocol.py's: one write per response instead of
  two (head, then body).
- lifespan off: Django has no lifespan support, so "auto" would log an
  ASGI lifespan error at every worker start.
- a bounded graceful shutdown: on SIGTERM, uvicorn stops accepting, lets
  requests in flight finish, and cancels what is still open (SSE streams) two
  seconds before gunicorn's graceful_timeout, when the arbiter would SIGKILL.
- no Server header.
- each request's task starts in a fresh context: on a keep-alive connection
  (nginx keeps them open to the app) asyncio can hand a request the context
  variables of the one before (python/cpython#140947), such as its request
  id or Django's thread-sensitive context (core/handlers.py guards that one
  too, under any server).
- `--reload` (the development loop, deploy/compose/dev.yml) works: gunicorn's
  reloader flags a changed file, and the worker finishes so a new one starts.
- a drain notice: when the graceful shutdown begins, the worker calls
  `on_drain()` from the module of the ASGI app (gunicorn's wsgi_app,
  config.asgi), if it has one, so responses that could outlast the drain
  (Server-Sent Events) end cleanly instead of being cut off. ASGI has no
  message for this: lifespan's shutdown comes only after the drain.

https://github.com/Kludex/uvicorn-worker and https://www.uvicorn.org/settings/
"""

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.arbiter import Arbiter
from protocol import HttpToolsOneWriteProtocol
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker as BaseUvicornWorker

logger = logging.getLogger("uvicorn.error")

# Time left between uvicorn cancelling open connections and gunicorn's kill.
SHUTDOWN_MARGIN_SECONDS = 2


class UvicornWorker(BaseUvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "uvloop",
        "http": HttpToolsOneWriteProtocol,
        "lifespan": "off",
        "server_header": False,
        "reset_contextvars": True,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - SHUTDOWN_MARGIN_SECONDS)

    async def _serve(self) -> None:
        # uvicorn_worker's _serve (pinned in requirements/app.txt), with DrainingServer.
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config, on_drain=self._drain_hook())
        self._install_sigquit_handler()
        if self.cfg.reload:
            asyncio.get_running_loop().create_task(self._exit_when_reloading(server))
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _exit_when_reloading(self, server: Server) -> None:
        # gunicorn's reloader (--reload, development only) marks a changed file
        # by setting `alive` to False from its thread; uvicorn's server does not
        # look at that flag, so this tells it to finish, and gunicorn starts a
        # worker with the new code.
        while self.alive:
            await asyncio.sleep(0.5)
        server.should_exit = True

    def _drain_hook(self) -> Callable[[], None] | None:
        module = sys.modules.get(str(self.cfg.wsgi_app or "").partition(":")[0])
        return getattr(module, "on_drain", None)


class DrainingServer(Server):
    """uvicorn's server, telling the app when the graceful shutdown begins."""

    def __init__(self, config: Config, on_drain: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_drain = on_drain

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        if self.on_drain is not None:
            try:
                self.on_drain()
            except Exception:
                logger.exception("on_drain() failed; draining without it")
        await super().shutdown(sockets=sockets)
