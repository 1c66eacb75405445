"""The ASGI entry point: gunicorn's Uvicorn workers load `config.asgi:application`.

Before serving, the worker runs Django's system checks and refuses to start on
any error, the way `runserver` does and gunicorn does not. This is what stops
a container that was given DJANGO_ALLOW_ASYNC_UNSAFE (check core.E001) or no
secret key (core.E002). https://docs.djangoproject.com/en/6.1/howto/deployment/asgi/
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()

from core.startup import refuse_to_start_on_check_errors  # noqa: E402  (needs the app registry)

refuse_to_start_on_check_errors()
