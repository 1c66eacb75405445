"""Stock Django's ASGI application, for comparison: django.core.asgi, not core.handlers.

The same project and settings as config.asgi, served the same way, but with
Django's own handler: every request in flight holds an OS thread.
"""

import os
import sys

sys.path.insert(0, "/srv/app")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
