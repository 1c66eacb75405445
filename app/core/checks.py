"""System checks that keep an unsafe configuration from ever serving, and the
request path of async views free of thread hops.

Run by `manage.py migrate` and `check`, and by config.asgi before a worker
serves (core.startup). https://docs.djangoproject.com/en/6.1/topics/checks/
"""

import os
from collections.abc import Sequence
from inspect import iscoroutinefunction

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from core import sizing

# The tag of the checks that ask the database: core.startup runs them at start.
SIZING = "sizing"
# The tag of the deploy check that the image's static files are where STATIC_ROOT says: core.startup runs it.
COLLECTED_STATIC = "collected_static"


@checks.register(checks.Tags.async_support)
def async_unsafe_escape_hatch(app_configs: Sequence[AppConfig] | None, **kwargs: object) -> list[checks.CheckMessage]:
    """DJANGO_ALLOW_ASYNC_UNSAFE turns off SynchronousOnlyOperation: never outside DEBUG.

    Django treats any non-empty value as "on", so any non-empty value is refused.
    https://docs.djangoproject.com/en/6.1/topics/async/#envvar-DJANGO_ALLOW_ASYNC_UNSAFE
    """
    if not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE"):
        return []
    message = (
        "DJANGO_ALLOW_ASYNC_UNSAFE is set. It disables the SynchronousOnlyOperation guard, "
        "letting sync database code run on the event loop, where it can corrupt or lose data."
    )
    if settings.DEBUG:
        return [checks.Warning(message, hint="Use it only for a moment on a laptop.", id="core.W001")]
    return [
        checks.Error(
            message,
            hint="Unset DJANGO_ALLOW_ASYNC_UNSAFE. Fix the code instead: `async for` over querysets, "
            "the a-prefixed ORM methods (aget, acreate), or sync_to_async around sync code.",
            id="core.E001",
        )
    ]


@checks.register(checks.Tags.security)
def secret_key_given(app_configs: Sequence[AppConfig] | None, **kwargs: object) -> list[checks.CheckMessage]:
    """Outside DEBUG there is no built-in key: every installation brings its own."""
    try:
        if settings.SECRET_KEY:  # Django raises on reading an empty key
            return []
    except ImproperlyConfigured:
        pass
    return [
        checks.Error(
            "DJANGO_SECRET_KEY is not set.",
            hint="Set DJANGO_SECRET_KEY, or DJANGO_SECRET_KEY_FILE with the path of a file holding it. "
            'Make one with: python -c "import secrets; print(secrets.token_urlsafe(50))"',
            id="core.E002",
        )
    ]


@checks.register(checks.Tags.staticfiles, COLLECTED_STATIC, deploy=True)
def static_files_collected(app_configs: Sequence[AppConfig] | None, **kwargs: object) -> list[checks.CheckMessage]:
    """Outside DEBUG, STATIC_ROOT holds collectstatic's manifest (core.E004), or every page naming a file fails.

    This is where the static root's rule is kept: the image's build runs collectstatic into STATIC_ROOT's
    default (Dockerfile), nginx serves /static/ from its copy of that folder (nginx/site/app.conf), and
    tests/test_routes.py checks that the three name one path. A deploy check: collectstatic, which
    writes the manifest, runs the others first; core.startup runs this one before a worker serves.
    """
    from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage

    if settings.DEBUG or not isinstance(staticfiles_storage, ManifestFilesMixin):  # LazyObject passes isinstance on
        return []
    if staticfiles_storage.exists(staticfiles_storage.manifest_name):
        return []
    return [
        checks.Error(
            f"STATIC_ROOT ({settings.STATIC_ROOT}) holds no {staticfiles_storage.manifest_name}: collectstatic "
            "has not written there, so every page that names a static file would fail.",
            hint="The image collects them into /srv/static at build time (Dockerfile) and nginx serves that "
            "folder: set DJANGO_STATIC_ROOT only together with both, or run collectstatic.",
            id="core.E004",
        )
    ]


def _pool_max_size(options: dict) -> int:
    """The most connections one process may hold: its pool's max_size, or one without a pool."""
    pool = options.get("pool")
    if not pool:
        return 1
    if not isinstance(pool, dict):  # True: psycopg_pool's defaults, max_size = min_size = 4
        return 4
    return pool.get("max_size") or pool.get("min_size", 4)


_LIMITS = """
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int,
           coalesce(current_setting('reserved_connections', true)::int, 0),
           (SELECT CASE WHEN rolsuper THEN -1 ELSE rolconnlimit END FROM pg_roles WHERE rolname = current_user),
           (SELECT datconnlimit FROM pg_database WHERE datname = current_database())
"""


def _available(alias: str) -> tuple[int, str]:
    """The connections Postgres lets the app open, and how that number came about."""
    import psycopg

    connection = connections[alias]
    with psycopg.connect(**connection.get_connection_params()) as raw, raw.cursor() as cursor:
        cursor.execute(_LIMITS)
        max_connections, superuser, reserved, role_limit, database_limit = cursor.fetchone()
    available = max_connections - superuser - reserved
    why = f"max_connections {max_connections} - {superuser + reserved} reserved for administrators"
    for name, limit in (("the role's CONNECTION LIMIT", role_limit), ("the database's", database_limit)):
        if 0 <= limit < available:
            available, why = limit, f"{name}, {limit}"
    return available, why


@checks.register(checks.Tags.database, SIZING)
def database_connections_fit(
    app_configs: Sequence[AppConfig] | None, databases: Sequence[str] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Every process's pool at its fullest fits the database's max_connections (core.E003).

    Run where a database is named: by the migrate step (`migrate` checks its
    database) and by core.startup before a worker serves; `check --database default`.
    """
    messages: list[checks.CheckMessage] = []
    try:
        workers = sizing.worker_count()
    except ValueError as error:
        return [checks.Error(str(error), id="core.E003")]
    for alias in databases or []:
        budget = sizing.ConnectionBudget(
            replicas=settings.APP_REPLICAS,
            workers=workers,
            pool_max=_pool_max_size(connections[alias].settings_dict["OPTIONS"]),
            spare=settings.DB_SPARE_CONNECTIONS,
            worker_replicas=settings.TASK_WORKER_REPLICAS,
        )
        try:
            available, why = _available(alias)
        except Exception as error:  # unreachable, refused, out of connections: not this check's verdict
            messages.append(
                checks.Warning(
                    f"Could not read the connection limits of database {alias!r}: {error}".strip(),
                    hint="core.E003 compares them with the app's pools when the database answers; "
                    "the migrate step runs it before every deploy.",
                    id="core.W012",
                )
            )
            continue
        if budget.total > available:
            messages.append(
                checks.Error(
                    f"The app may open {budget.total} connections to database {alias!r}, more than the "
                    f"{available} it allows ({why}): {budget.explain()}.",
                    hint="Lower DB_POOL_MAX_SIZE, the workers per container (GUNICORN_WORKERS, or APP_CPUS), "
                    "APP_REPLICAS or TASK_WORKER_REPLICAS, or raise max_connections in Postgres. "
                    'See docs/operations.md, "Sizing".',
                    id="core.E003",
                )
            )
    return messages


def _thread_cost(middleware: type) -> str | None:
    """Why `middleware` would cost a thread on every async request, or None."""
    from django.utils.deprecation import MiddlewareMixin

    if not getattr(middleware, "async_capable", False):
        return "is sync-only: Django adapts it, and every request crosses into a thread and back"
    if (
        issubclass(middleware, MiddlewareMixin)
        and middleware.__acall__ is MiddlewareMixin.__acall__
        and (hasattr(middleware, "process_request") or hasattr(middleware, "process_response"))
    ):
        return "is a MiddlewareMixin: it runs process_request/process_response in a thread on every request"
    from core.dropins import NoHopMixin

    process_view = getattr(middleware, "process_view", None)
    async_view_hook = issubclass(middleware, NoHopMixin) and hasattr(middleware, "aprocess_view")
    if process_view is not None and not (iscoroutinefunction(process_view) or async_view_hook):
        return "has a sync process_view: Django runs it in a thread on every request"
    return None


@checks.register(checks.Tags.async_support)
def middleware_stays_on_the_event_loop(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Warn about middleware that would cost every async request a thread (core.W010)."""
    from core import dropins

    messages = []
    for path in settings.MIDDLEWARE:
        middleware = dropins.resolve(path)
        reason = _thread_cost(middleware)
        if reason:
            messages.append(
                checks.Warning(
                    f"Middleware {path} {reason}.",
                    hint="Make it async-native (async_capable = True, sync_capable = False, an async "
                    "__call__), or subclass it with core.dropins.NoHopMixin if its hooks do no I/O. "
                    "See docs/async-safety.md.",
                    id="core.W010",
                )
            )
    return messages


@checks.register(checks.Tags.async_support)
def request_signals_stay_on_the_event_loop(
    app_configs: Sequence[AppConfig] | None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Warn about sync receivers of request_started/request_finished (core.W011)."""
    from django.core import signals

    from core.handlers import StockASGIHandler, other_receivers

    messages = []
    for name in ("request_started", "request_finished"):
        sync_receivers, _ = other_receivers(getattr(signals, name), StockASGIHandler)
        for receiver in sync_receivers:
            label = f"{receiver.__module__}.{getattr(receiver, '__qualname__', receiver)}"
            messages.append(
                checks.Warning(
                    f"{label} is a sync receiver of {name}: every request runs it in a thread.",
                    hint="Make the receiver an async function, or connect it only where it is needed.",
                    id="core.W011",
                )
            )
    return messages
