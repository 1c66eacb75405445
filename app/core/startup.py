"""Refuse to serve when Django's system checks report an error.

gunicorn, uvicorn and the other servers never run the checks that `runserver`
runs; the entry points (config.asgi, config.wsgi) call this instead.
"""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from core.checks import COLLECTED_STATIC, SIZING


def refuse_to_start_on_check_errors() -> None:
    """Raise ImproperlyConfigured listing every serious check message.

    The checks that ask the database run too: those of the SIZING tag only, as
    Django's own database checks are the migrate step's. So do the static files'
    (core.E004 is a deploy check, for collectstatic's sake).
    """
    messages = [
        *checks.run_checks(),
        *checks.run_checks(tags=[SIZING], databases=list(connections)),
        *checks.run_checks(tags=[COLLECTED_STATIC], include_deployment_checks=True),
    ]
    errors = [message for message in messages if message.is_serious()]
    if errors:
        lines = "\n".join(f"  {message}" for message in errors)
        raise ImproperlyConfigured(f"System check found errors; refusing to start:\n{lines}")
