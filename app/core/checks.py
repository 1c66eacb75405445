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
from django.utils.module_loading import import_string


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
    from core.middleware import NoHopMixin

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
    from core.middleware import NO_HOP_SUBSTITUTES

    messages = []
    for path in settings.MIDDLEWARE:
        middleware = NO_HOP_SUBSTITUTES.get(path) or import_string(path)
        reason = _thread_cost(middleware)
        if reason:
            messages.append(
                checks.Warning(
                    f"Middleware {path} {reason}.",
                    hint="Make it async-native (async_capable = True, sync_capable = False, an async "
                    "__call__), or subclass it with core.middleware.NoHopMixin if its hooks do no I/O. "
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
