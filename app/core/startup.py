"""Refuse to serve when Django's system checks report an error.

gunicorn, uvicorn and the other servers never run the checks that `runserver`
runs; the entry points (config.asgi, config.wsgi) call this instead.
"""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured


def refuse_to_start_on_check_errors() -> None:
    """Raise ImproperlyConfigured listing every serious check message."""
    errors = [message for message in checks.run_checks() if message.is_serious()]
    if errors:
        lines = "\n".join(f"  {message}" for message in errors)
        raise ImproperlyConfigured(f"System check found errors; refusing to start:\n{lines}")
