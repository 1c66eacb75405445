"""The project's worker with lifespan on, for uvicorn-worker's test of an app whose lifespan startup fails.

workers.UvicornWorker turns lifespan off (Django has none), so that failure cannot happen
with it as configured; with lifespan on, the test exercises its _serve() and the boot-error
exit that gunicorn's arbiter acts on. gunicorn imports it by name (suite_plugin.py).
"""

from typing import Any

from workers import UvicornWorker


class LifespanOnUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "on"}
