"""The ASGI entry point gunicorn's Uvicorn workers load: core.handlers.ASGIHandler, or Django's own with
DJANGO_STOCK_HANDLER=true. It runs the system checks before a worker serves and refuses to start on an
error, as `runserver` does: the escape hatch (core.E001) or a missing secret key (core.E002) never serves.
See docs/async-safety.md. https://docs.djangoproject.com/en/6.1/howto/deployment/asgi/
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
