"""Django settings: one module, grouped by concern, every value read once from the environment.

Read by: manage.py, config.asgi (gunicorn's Uvicorn workers) and the tests.
Copying it: keep the groups; add your apps to INSTALLED_APPS. The variables and
their production values are listed in .env.example; the safe defaults here are
for `docker compose up` on a laptop (plain HTTP on localhost, DEBUG off).
Reference: https://docs.djangoproject.com/en/6.1/ref/settings/
"""

import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key
from django.utils.csp import CSP

from core import probes
from core.env import env, metrics_port, secret

BASE_DIR = Path(__file__).resolve().parent.parent

# --- Core ---------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Without a key, DEBUG gets a throwaway one per process; otherwise the check
# core.E002 stops the app and the migrate step (see core/checks.py).
SECRET_KEY = secret("DJANGO_SECRET_KEY") or (get_random_secret_key() if DEBUG else "")
# The site's public names, served over https (by nginx itself with
# deploy/compose/https.yml, or by a TLS proxy in front). They are the defaults
# of the allowed hosts, the trusted origins and DJANGO_HTTPS below, so a site
# names itself once.
SITE_DOMAINS = [name.strip() for name in env.list("SITE_DOMAINS", default=[]) if name.strip()]
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=SITE_DOMAINS or ["localhost", "127.0.0.1", "[::1]"])
ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "core",
    "books",
    # django.tasks' Postgres backend: the queue is a table (app/worker, docs/tasks.md).
    "django_tasks_db",
    "worker",
]

# Under ASGI, core.handlers.ASGIHandler runs Django's own middleware below
# through drop-in subclasses (core/dropins.py, resolve()) that stay on
# the event loop and hop to a thread only when a request needs one (a session
# to save, a form to check); under WSGI they are Django's, unchanged. The
# system checks core.W010 and core.W011 warn when something added here, or to
# the request signals, would cost a thread per request. See docs/async-safety.md.
MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.metrics.MetricsMiddleware",
    "core.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "core.middleware.StaticFilesMiddleware",
    "core.middleware.RequestLimitMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# --- The ASGI request path (config/asgi.py) -------------------------------------------
# true: serve with Django's own ASGI handler and middleware, unchanged, at the
# cost of a thread per request in flight. The first thing to try if the app
# misbehaves under the blueprint's handler: see docs/async-safety.md.
STOCK_ASGI_HANDLER = env.bool("DJANGO_STOCK_HANDLER", default=False)

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # {{ csp_nonce }} and {% csp_nonce_attr %}: the admin's scripts carry it.
                "django.template.context_processors.csp",
            ],
        },
    },
]

# --- Database: Postgres through psycopg's pool ---------------------------------
# TCP keepalive probes find a connection whose peer is gone while it is idle
# (in the pool): after idle + interval x count seconds of silence.
DB_KEEPALIVES = {
    "keepalives_idle": env.int("DB_KEEPALIVES_IDLE", default=5),
    "keepalives_interval": env.int("DB_KEEPALIVES_INTERVAL", default=1),
    "keepalives_count": env.int("DB_KEEPALIVES_COUNT", default=3),
}
# Data sent and not acknowledged within this time (a query, the pool's check
# of a connection) ends the connection with an error instead of waiting.
DB_TCP_USER_TIMEOUT_MS = int(env.float("DB_TCP_USER_TIMEOUT", default=1.0) * 1000)
# Under ASGI, Django's docs ask for CONN_MAX_AGE = 0 with a pool: each request
# borrows a connection and gives it back when the request ends.
# https://docs.djangoproject.com/en/6.1/ref/databases/#connection-pool
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": env("POSTGRES_HOST", default="db"),
        "PORT": env.int("POSTGRES_PORT", default=5432),
        "NAME": env("POSTGRES_DB", default="app"),
        "USER": env("POSTGRES_USER", default="app"),
        "PASSWORD": secret("POSTGRES_PASSWORD") or "",
        "CONN_MAX_AGE": 0,
        "ATOMIC_REQUESTS": False,
        # The pool hands out only connections that answer, so a database
        # restart costs no failed request once it is back.
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            "sslmode": env("POSTGRES_SSLMODE", default="prefer"),
            "connect_timeout": env.int("DB_CONNECT_TIMEOUT", default=2),
            # A database that goes silent (a network partition, a frozen host)
            # refuses nothing: without these, a query on its dead socket waits
            # for the kernel's TCP retransmissions, some 15 minutes. libpq
            # parameters, which psycopg takes from OPTIONS as they are:
            # https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-KEEPALIVES
            "keepalives": 1,
            **DB_KEEPALIVES,
            "tcp_user_timeout": DB_TCP_USER_TIMEOUT_MS,
            # The same bounds on Postgres' side, so a backend whose client
            # vanished ends too instead of holding a connection slot, and a
            # statement timeout: a query that runs longer is cancelled (an
            # error, so a 503); no request holds a connection for long.
            # https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-STATEMENT-TIMEOUT
            # https://www.postgresql.org/docs/current/runtime-config-connection.html#GUC-TCP-KEEPALIVES-IDLE
            "options": " ".join(
                f"-c {name}={value}"
                for name, value in {
                    "statement_timeout": env.int("DB_STATEMENT_TIMEOUT", default=5) * 1000,
                    "tcp_user_timeout": DB_TCP_USER_TIMEOUT_MS,
                    **{f"tcp_{name}": value for name, value in DB_KEEPALIVES.items()},
                }.items()
            ),
            "pool": {
                "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
                "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
                # How long a request waits for a free connection before it
                # fails (503, see core/middleware.py) instead of hanging.
                "timeout": env.float("DB_POOL_TIMEOUT", default=3.0),
                # While the database is down, the pool retries each connection
                # with growing pauses (1, 2, 4 ... s), and while one retry
                # waits, no request can start another: after a long outage
                # the app would stay down for up to half its length. Giving up
                # after a few seconds lets the next request try at once, so
                # the app is back within seconds of the database.
                # https://www.psycopg.org/psycopg3/docs/api/pool.html#psycopg_pool.ConnectionPool
                "reconnect_timeout": env.float("DB_POOL_RECONNECT_TIMEOUT", default=5.0),
                # Requests that may queue for a connection; one more is turned
                # away at once (psycopg_pool.TooManyRequests, a 503 with
                # Retry-After in core/middleware.py) instead of waiting the
                # pool timeout to fail anyway. 0: no bound.
                "max_waiting": env.int("DB_POOL_MAX_WAITING", default=40),
                # The pool checks each connection before handing it out
                # (CONN_HEALTH_CHECKS, ConnectionPool.check_connection) and
                # drops one returned broken (its query failed on the network);
                # an idle connection older than this is closed too (seconds).
                "max_idle": env.float("DB_POOL_MAX_IDLE", default=300.0),
            },
        },
    }
}
# Requests one worker holds at once before it turns more away with a 503
# (core.middleware.RequestLimitMiddleware); streams count only until they
# start. 0: no bound.
WORKER_MAX_REQUESTS_IN_FLIGHT = env.int("WORKER_MAX_REQUESTS_IN_FLIGHT", default=1000)

# --- Sizing: the connections all of it may open fit the database (core.E003) -------------
# The system check core.E003 (core/checks.py), run by the migrate step and by
# every worker at start, adds up (APP_REPLICAS + 1 during a rolling deploy) x
# workers x DB_POOL_MAX_SIZE + the migrate step + DB_SPARE_CONNECTIONS and
# refuses to go on when that is more than Postgres allows. docs/operations.md, "Sizing".
APP_REPLICAS = env.int("APP_REPLICAS", default=1)
DB_SPARE_CONNECTIONS = env.int("DB_SPARE_CONNECTIONS", default=5)
# Task worker containers (app/worker) in normal operation: 2 connections each.
TASK_WORKER_REPLICAS = env.int("TASK_WORKER_REPLICAS", default=1)

# --- Migrations: the migrate step never queues the site behind a lock -------------
# core/management/commands/migrate.py sets these on its own connection, over
# the statement timeout above. A migration waits for a lock at most
# MIGRATE_LOCK_TIMEOUT seconds (and every query on its table waits behind it
# that long: keep it below DB_STATEMENT_TIMEOUT), then is rolled back and
# tried again MIGRATE_LOCK_TRIES times in all, MIGRATE_RETRY_PAUSE seconds
# apart, before the deploy fails. A statement longer than
# MIGRATE_STATEMENT_TIMEOUT seconds fails it at once (0: no limit).
# https://www.postgresql.org/docs/current/runtime-config-client.html#GUC-LOCK-TIMEOUT
MIGRATE_LOCK_TIMEOUT = env.float("DB_MIGRATE_LOCK_TIMEOUT", default=2.0)
MIGRATE_LOCK_TRIES = env.int("DB_MIGRATE_LOCK_TRIES", default=5)
MIGRATE_RETRY_PAUSE = env.float("DB_MIGRATE_RETRY_PAUSE", default=5.0)
MIGRATE_STATEMENT_TIMEOUT = env.float("DB_MIGRATE_STATEMENT_TIMEOUT", default=60.0)

# --- Live updates (books/live.py, docs/live-updates.md) ------------------------------------
# Each worker keeps the last LIVE_BUFFER books in memory: a client resuming
# from an id among them (Last-Event-ID) is caught up without a query.
LIVE_BUFFER = env.int("LIVE_BUFFER", default=1000)
# Books a stream may fall behind by before it is ended with a retry hint (the
# client resumes from its last id) instead of buffering without bound.
LIVE_QUEUE_SIZE = env.int("LIVE_QUEUE_SIZE", default=256)
# Seconds between a stream's comment lines (sent to every stream at once, busy
# or not), so that proxies and load balancers (idle timeouts of 60 s are
# common) keep it open.
LIVE_KEEPALIVE = env.float("LIVE_KEEPALIVE", default=15.0)
# How long a client waits before reconnecting (the stream's `retry:` field).
LIVE_RETRY_MS = int(env.float("LIVE_RETRY", default=2.0) * 1000)
# Seconds between the worker's numbers (open streams, threads) on a stream
# that asks for them (?stats=1, the live page).
LIVE_STATS_INTERVAL = env.float("LIVE_STATS_INTERVAL", default=5.0)

# --- Background tasks: django.tasks on Postgres (app/worker, docs/tasks.md) -----------------
# enqueue()/aenqueue() write a row in the caller's transaction (a rollback
# removes it); `manage.py run_worker` claims rows with SKIP LOCKED and runs them.
# https://docs.djangoproject.com/en/6.1/topics/tasks/
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
# Seconds between looks at the queue while it is empty: how late a task may start.
TASK_WORKER_INTERVAL = env.float("TASK_WORKER_INTERVAL", default=1.0)
# The platform's grace period for a stopping worker, in seconds (compose's
# stop_grace_period reads it; tests/test_manifests.py checks every host's is at
# least this): the running task has until 5 s before it ends to finish, then is
# interrupted and put back in the queue (worker/run.py).
TASK_WORKER_GRACE = env.float("TASK_WORKER_GRACE", default=30.0)
# A task running longer than this many seconds marks its worker stuck: the
# healthcheck (deploy/worker/healthcheck.py) fails and the platform replaces it.
TASK_TIME_LIMIT = env.float("TASK_TIME_LIMIT", default=300.0)
# How many workers may claim a task whose worker died (kill -9, out of memory,
# a lost machine) before it is recorded as failed instead of run again.
TASK_MAX_ATTEMPTS = env.int("TASK_MAX_ATTEMPTS", default=3)
# Seconds between a worker's looks for tasks whose worker is gone.
TASK_REAP_INTERVAL = env.float("TASK_REAP_INTERVAL", default=15.0)
# The demo task's slow work (books/tasks.py): seconds it waits, as for a slow API.
BOOK_SUMMARY_DELAY = env.float("BOOK_SUMMARY_DELAY", default=2.0)

# --- Behind nginx (or another TLS-terminating proxy) ------------------------------
# nginx overwrites X-Forwarded-Proto on every request (nginx/templates), so the
# header can be trusted here; the app's port is reachable only through nginx.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[f"https://{name}" for name in SITE_DOMAINS])

# --- HTTPS: on in production, where nginx or a proxy in front ends TLS --------------
HTTPS = env.bool("DJANGO_HTTPS", default=bool(SITE_DOMAINS))
SECURE_SSL_REDIRECT = HTTPS
# Probes talk plain HTTP to the app directly; they must not be redirected.
SECURE_REDIRECT_EXEMPT = [f"^{re.escape(path.lstrip('/'))}$" for path in probes.PATHS]
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
# Strict-Transport-Security, on requests that came over https only. nginx sends
# the same value on what it answers itself (static files, its error pages),
# computed from these same variables (nginx/entrypoint/19-strict-transport-security.sh).
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=False)
# `check --deploy` asks for preload (security.W021). It is off on purpose: being
# preloaded is hard to undo; .env.example says how and when to turn it on.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- Security headers: Django sends them on every page ----------------------------------
# SecurityMiddleware, ContentSecurityPolicyMiddleware and XFrameOptionsMiddleware
# send them, and nginx passes them on untouched, so a view can relax them for
# itself (@xframe_options_exempt, @csp_override: books.views.embed). nginx adds
# its own fixed set only to what it answers itself. See docs/architecture.md.
# https://docs.djangoproject.com/en/6.1/ref/csp/
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = env("DJANGO_REFERRER_POLICY", default="same-origin")
# Who may show the pages in a frame: nobody (DENY) or this site (SAMEORIGIN).
# The policy's frame-ancestors says the same for browsers that read only CSP.
X_FRAME_OPTIONS = env("DJANGO_X_FRAME_OPTIONS", default="DENY").upper()
_frame_ancestors = {"DENY": CSP.NONE, "SAMEORIGIN": CSP.SELF}
if X_FRAME_OPTIONS not in _frame_ancestors:
    raise ImproperlyConfigured(f"DJANGO_X_FRAME_OPTIONS must be DENY or SAMEORIGIN, not {X_FRAME_OPTIONS!r}.")
# Only this site's own scripts, styles, images and fonts, plus inline scripts
# that carry the response's nonce (<script {% csp_nonce_attr %}>); no plugins,
# forms post back here only. The admin needs nothing more. Widen it here if
# your pages load from other origins.
_content_security_policy = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [_frame_ancestors[X_FRAME_OPTIONS]],
}
if _report_uri := env("DJANGO_CSP_REPORT_URI", default=""):
    _content_security_policy["report-uri"] = [_report_uri]
# Report-only: browsers report what the policy would block and block nothing;
# for trying a changed policy on real traffic before enforcing it.
if env.bool("DJANGO_CSP_REPORT_ONLY", default=False):
    SECURE_CSP, SECURE_CSP_REPORT_ONLY = {}, _content_security_policy
else:
    SECURE_CSP, SECURE_CSP_REPORT_ONLY = _content_security_policy, {}

# --- Static files: hashed and compressed at build time ---------------------------
# nginx serves /static/ from the files baked into its image; without nginx the
# app serves them itself (core.middleware.StaticFilesMiddleware, WhiteNoise).
# STATIC_ROOT is also named by the Dockerfile and nginx: check core.E004 says
# where that rule is kept.
STATIC_URL = "/static/"
STATIC_ROOT = env("DJANGO_STATIC_ROOT", default="/srv/static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- The demo API ------------------------------------------------------------------
# POST /books/ needs "Authorization: Bearer <API_TOKEN>"; without a token
# configured, writes are refused (403).
API_TOKEN = secret("API_TOKEN")

# --- Metrics (core/metrics.py) -----------------------------------------------------------
# The port on which /metrics is served (9100; empty: none), as gunicorn.conf.py
# and the task worker bind it. Requests to any other port never see /metrics.
METRICS_PORT = metrics_port()

# --- Internationalisation ----------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Logging: JSON lines to stdout, each with its request's id (core/jsonlog.py) -----
# gunicorn's and uvicorn's lines use the same format (gunicorn.conf.py).
LOG_LEVEL = env("DJANGO_LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "core.jsonlog.JsonFormatter"},
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"},
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # A stack trace goes to the log, never to the client (DEBUG is off).
        "django": {"handlers": ["stdout"], "level": LOG_LEVEL, "propagate": False},
    },
}
