"""Reading configuration from the environment, in one place.

Every setting in settings.py comes through here: plain values through
django-environ's ``env``, secrets through :func:`secret`, which also accepts a
``NAME_FILE`` path (Docker and Kubernetes secrets mount files). gunicorn.conf.py
reads :func:`metrics_port` here too, before Django loads: one default, one reading.
In core, which copies as is, so a settings module of any name imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()


def secret(name: str) -> str | None:
    """Return the secret ``name`` from ``$name`` or from the file at ``$name_FILE``, or None.

    Setting both is an error, as in the official postgres image, so that a
    stale variable cannot silently win over a mounted secret. One trailing
    newline is stripped from a file, since editors and ``echo`` add one.
    """
    # An empty variable counts as unset: compose passes `${X:-}` that way.
    value = os.environ.get(name) or None
    path = os.environ.get(f"{name}_FILE") or None
    if value is not None and path is not None:
        raise ImproperlyConfigured(f"Set {name} or {name}_FILE, not both.")
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path} cannot be read: {exc.strerror}.") from None
        value = value.removesuffix("\n").removesuffix("\r")
    return value or None


METRICS_PORT_DEFAULT = 9100


def metrics_port() -> int | None:
    """The port Prometheus scrapes, from ``$METRICS_PORT`` (9100 unless set); None when it is set empty (off)."""
    raw = os.environ.get("METRICS_PORT", str(METRICS_PORT_DEFAULT)).strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ImproperlyConfigured(f"METRICS_PORT must be a port number (1-65535) or empty, not {raw!r}.")
    return int(raw)
