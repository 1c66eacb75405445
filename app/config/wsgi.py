"""The WSGI entry point, kept for comparison runs under gunicorn's gthread worker.

The blueprint serves through config.asgi; this module exists so the benchmark
can race the same app under WSGI. https://docs.djangoproject.com/en/6.1/howto/deployment/wsgi/
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

from core.startup import refuse_to_start_on_check_errors  # noqa: E402  (needs the app registry)

refuse_to_start_on_check_errors()
