"""The probe paths, in one table: plain Python, read by settings.py and deploy/app/healthcheck.py too.

core/health.py answers them, core.middleware.HealthCheckMiddleware before any
other middleware, core.metrics labels them by path, settings exempts them from
the HTTPS redirect, and every host's manifest probes them (tests/test_manifests.py
checks each against this table).
"""

# The worker's event loop answers; nothing else is touched (a database outage
# must not get healthy containers restarted).
LIVENESS = "/healthz"
# A query gets through the database pool in time: where traffic may go.
READINESS = "/readyz"
PATHS = (LIVENESS, READINESS)
