"""System checks that keep an unsafe configuration from ever serving.

Run by `manage.py migrate` and `check`, and by config.asgi before a worker
serves (core.startup). https://docs.djangoproject.com/en/6.1/topics/checks/
"""

import os
from collections.abc import Sequence

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


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
