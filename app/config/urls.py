"""URL map: the article's demos (books/urls.py) and the admin.

The probes (/healthz, /readyz) have no route: core.middleware.HealthCheckMiddleware
answers them before any other middleware, host validation included.
"""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("books.urls")),
]
