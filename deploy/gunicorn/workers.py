"""The Uvicorn worker gunicorn runs: uvicorn_worker.UvicornWorker, with what it leaves to chance set.

The event loop and parser (uvloop, httptools, protocol.py's protocol), lifespan
off, a graceful shutdown bounded by gunicorn's graceful_timeout with a drain
notice to the app (on_drain), a fresh context per request, no Server header,
and --reload. Each is explained in docs/architecture.md ("The worker").
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
