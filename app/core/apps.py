import atexit

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Project-wide plumbing: system checks, probes and async-native middleware."""

    name = "core"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the checks)

        # psycopg's pool keeps worker threads; unless the pool is closed, a
        # management command (migrate, shell) waits seconds for them at exit.
        atexit.register(close_pools)


def close_pools() -> None:
    from django.db import connections

    for alias in connections:
        connection = connections[alias]
        # Pools are shared by the process's threads; close only one that exists.
        if alias in getattr(type(connection), "_connection_pools", {}):
            connection.close_pool()
