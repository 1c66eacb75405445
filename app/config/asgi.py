"""The ASGI entry point: gunicorn's Uvicorn workers load `config.asgi:application`.

The application is core.handlers.ASGIHandler, Django's ASGI handler minus the
OS thread it otherwise holds for every request in flight; with
DJANGO_STOCK_HANDLER=true it is Django's own, with Django's middleware as is.

Before serving, the worker runs Django's system checks and refuses to start on
any error, the way `runserver` does and gunicorn does not. This is what stops
a container that was given DJANGO_ALLOW_ASYNC_UNSAFE (check core.E001) or no
secret key (core.E002). https://docs.djangoproject.com/en/6.1/howto/deployment/asgi/
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# What django.core.asgi.get_asgi_application() does, with the handler chosen below.
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

# on_drain: called by the Uvicorn worker when a graceful shutdown begins (deploy/gunicorn/workers.py).
from core.draining import begin as on_drain  # noqa: E402, F401
from core.startup import refuse_to_start_on_check_errors  # noqa: E402

if settings.STOCK_ASGI_HANDLER:
    from django.core.handlers.asgi import ASGIHandler
else:
    from core.handlers import ASGIHandler  # needs the app registry

application = ASGIHandler()

refuse_to_start_on_check_errors()
