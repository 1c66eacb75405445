# The images of the stack, built by `docker compose build` (docker-compose.yml):
#   app    the Django app under gunicorn with Uvicorn workers (also runs migrations
#          and the task worker)
#   secrets  the one-shot step that gives an installation its secrets: an image
#          of its own, so that a new build of the app leaves it, and the
#          database that starts after it, as they are
#   nginx  the official nginx image with this project's config and the static files
#   acme   certbot, which obtains and renews the site's certificate when nginx
#          serves HTTPS itself (deploy/compose/https.yml, deploy/acme/acme.py)
# and, below the marked line after them, the test command's own.
# Copying it into a project of your own (docs/adopt.md): name your settings
# module in the `base` stage (DJANGO_SETTINGS_MODULE), delete from the marked
# line to the end, and change the paths in the `build` stage if your project is
# laid out differently. Base images are pinned by tag, named on their FROM lines, where
# Dependabot finds and updates them (.github/dependabot.yml); to pin a digest,
# add it there (FROM python:3.13-slim-trixie@sha256:...) and Dependabot moves it too.

# --- base: what every Python stage shares ------------------------------------------
FROM python:3.13-slim-trixie AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# The project's settings module, read by manage.py (collectstatic below, migrate,
# the task worker) and by gunicorn, which serves the asgi.py of its package
# (deploy/gunicorn/gunicorn.conf.py). In a project of your own: yours.
ENV DJANGO_SETTINGS_MODULE=config.settings
# The app's user, and /srv/secrets owned by it: the `secrets` volume copies that
# directory, empty, when it is created (docker-compose.yml).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /srv --no-create-home --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0755 /srv/secrets

# --- build: dependencies, bytecode and static files; discarded afterwards -----------
FROM base AS build
RUN python -m venv /opt/venv
COPY requirements/app.txt /tmp/requirements/app.txt
# Wheels only: nothing is compiled, so the image needs no compiler.
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/app.txt
COPY app/ /srv/app/
COPY deploy/gunicorn/ /srv/deploy/gunicorn/
COPY deploy/app/ /srv/deploy/app/
COPY deploy/worker/ /srv/deploy/worker/
# Bytecode compiled once here: the app runs on a read-only filesystem. The
# hash-based .pyc files stay valid whatever timestamps the copy gives them.
RUN python -m compileall -q --invalidation-mode unchecked-hash /opt/venv /srv/app /srv/deploy
# Hashed names and gzipped copies, for nginx and WhiteNoise alike;
# collectstatic runs only the staticfiles checks, so no secret is needed.
WORKDIR /srv/app
RUN python manage.py collectstatic --noinput --verbosity 0

# --- app: the production image ---------------------------------------------------------
FROM base AS app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/app /srv/app
COPY --from=build /srv/deploy /srv/deploy
COPY --from=build /srv/static /srv/static
USER 10001:10001
WORKDIR /srv/app
EXPOSE 8000
CMD ["gunicorn", "-c", "/srv/deploy/gunicorn/gunicorn.conf.py"]

# --- secrets: the one-shot secrets step (docker-compose.yml) --------------------------
# Only the script: the image changes when it does, not with every build of the app.
FROM base AS secrets
COPY deploy/app/init_secrets.py /srv/deploy/app/init_secrets.py
USER 10001:10001
CMD ["python", "/srv/deploy/app/init_secrets.py"]

# --- nginx: the front door, with the static files baked in -------------------------------
FROM nginx:1.30-trixie AS nginx
RUN rm -f /etc/nginx/conf.d/default.conf
COPY nginx/nginx.conf /etc/nginx/nginx.conf
COPY nginx/templates/ /etc/nginx/templates/
COPY nginx/site/ /etc/nginx/site/
# Plain HTTP behind a TLS proxy, unless deploy/compose/https.yml says on; the
# certificate and the ACME challenges then come from the acme service's volumes.
ENV NGINX_TLS=off
RUN install -d -m 0755 /etc/nginx/certs /var/www/acme /etc/nginx/main.d
# Keeps nginx's list of app servers in step with DNS and /healthz (nginx/upstream/app-upstream),
# started by the image's entrypoint before nginx (nginx/entrypoint/40-app-upstream.sh).
# nginx/entrypoint/19-strict-transport-security.sh, run by the entrypoint too, writes
# the app's HSTS value into the config, for nginx's own answers.
COPY --chmod=0755 nginx/upstream/app-upstream /usr/local/bin/app-upstream
COPY --chmod=0755 nginx/entrypoint/ /docker-entrypoint.d/
# The container's healthcheck (docker-compose.yml): nginx answers, and the watcher is alive.
COPY --chmod=0755 nginx/healthcheck.sh /usr/local/bin/nginx-healthcheck
# A reload that returns once nginx serves with the new configuration (nginx/reload.sh).
COPY --chmod=0755 nginx/reload.sh /usr/local/bin/nginx-reload
COPY --from=build /srv/static /srv/static

# --- acme: certbot, for nginx's own HTTPS (deploy/compose/https.yml) -------------------------
# Debian's certbot, kept up to date by Debian's security updates. It runs as
# its own user, on a read-only filesystem; the directories below are volumes,
# which take this ownership when first mounted.
FROM debian:trixie-slim AS acme
# Not pinned to a version: Debian's security updates replace it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends certbot \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 acme \
 && useradd --system --uid 10002 --gid acme --home-dir /var/lib/acme --no-create-home --shell /usr/sbin/nologin acme \
 && install -d -o acme -g acme -m 0700 /var/lib/acme /var/lib/acme/config /var/lib/acme/work \
 && install -d -o acme -g acme -m 0755 /srv/certs /var/www/acme /var/www/acme/.well-known \
 && echo "live -> the directory of the certificate nginx serves (deploy/acme/acme.py)" > /srv/certs/README \
 && chown acme:acme /srv/certs/README
COPY deploy/acme/acme.py /srv/acme/acme.py
ENV PYTHONDONTWRITEBYTECODE=1
USER 10002:10002
CMD ["python3", "/srv/acme/acme.py", "run"]

# ==== The test command's images: test, bench, uvicorn-suite, django-suite, pebble ====
# Built only by the test command (tests/run) and the benchmark (bench/); nothing
# above uses them. A project of your own deletes from this line to the end (docs/adopt.md).
#   test   the app image plus the app's own test tools (tests/app)
#   bench  the app image plus the servers the benchmark races it against (bench/)
#   uvicorn-suite  the test image plus uvicorn's and uvicorn-worker's own tests, run
#          with their classes and the blueprint's protocol and worker (tests/uvicorn_suite)
#   django-suite  the test image plus Django's own tests, run stock and with the
#          blueprint's handler and middleware (tests/django_suite)
#   pebble Let's Encrypt's test CA, for the test command's HTTPS tests only (tests/acme)

# --- test: the app image with pytest, for the app's own tests -------------------------
FROM app AS test
USER 0
COPY requirements/app.txt requirements/test.txt /tmp/requirements/
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/test.txt
COPY tests/app/ /srv/tests/
USER 10001:10001
WORKDIR /srv/tests
CMD ["pytest"]

# --- bench: the app image plus granian, daphne and the comparison apps, for bench/ ----
FROM app AS bench
USER 0
COPY requirements/app.txt requirements/bench-servers.txt /tmp/requirements/
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/bench-servers.txt
COPY bench/raw_asgi.py /srv/bench/
USER 10001:10001

# --- uvicorn-suite: uvicorn's and uvicorn-worker's own tests, against protocol.py and workers.py --
# Run by the `uvicorn-suite` service of tests/compose.test.yml (tests/uvicorn_suite).
FROM test AS uvicorn-suite
USER 0
COPY requirements/app.txt requirements/uvicorn-suite.txt /tmp/requirements/
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/uvicorn-suite.txt
# The tests of exactly the uvicorn and uvicorn-worker the app runs: their source
# distributions, checked against the hashes app.txt locks (their lines are taken from
# there, so each version and hash lives in one place; the count stops a silent empty
# download). pip reads an sdist's metadata with its build backend: the locked one
# installed above (--no-build-isolation). Only tests/ and the pytest settings are
# kept: the tests import the installed packages.
RUN awk '/^(uvicorn|uvicorn-worker)==/ {found = 1} found {print} found && !/\\$/ {found = 0}' \
      /tmp/requirements/app.txt > /tmp/requirements/uvicorn-sdists.txt \
 && test "$(grep -c '==' /tmp/requirements/uvicorn-sdists.txt)" -eq 2 \
 && pip download --quiet --no-deps --no-binary=:all: --no-build-isolation --require-hashes \
      -r /tmp/requirements/uvicorn-sdists.txt -d /tmp/uvicorn-sdists \
 && mkdir -p /srv/uvicorn-suite/uvicorn /srv/uvicorn-suite/uvicorn-worker \
 && tar -xzf /tmp/uvicorn-sdists/uvicorn-[0-9]*.tar.gz -C /srv/uvicorn-suite/uvicorn --no-same-owner \
      --strip-components=1 --wildcards --no-wildcards-match-slash '*/tests' '*/pyproject.toml' \
 && tar -xzf /tmp/uvicorn-sdists/uvicorn_worker-[0-9]*.tar.gz -C /srv/uvicorn-suite/uvicorn-worker --no-same-owner \
      --strip-components=1 --wildcards --no-wildcards-match-slash '*/tests' '*/pyproject.toml' \
 && rm -rf /tmp/uvicorn-sdists /tmp/requirements/uvicorn-sdists.txt
COPY tests/uvicorn_suite/ /srv/uvicorn-suite/harness/
# The harness, and protocol.py and workers.py by the names gunicorn's config imports them by.
ENV PYTHONPATH=/srv/uvicorn-suite/harness:/srv/deploy/gunicorn
USER 10001:10001
WORKDIR /srv/uvicorn-suite
CMD ["python", "/srv/uvicorn-suite/harness/run_suites.py"]

# --- django-suite: Django's own tests, stock and with core.handlers and core.middleware --
# Run by the `django-suite` service of tests/compose.test.yml (tests/django_suite).
FROM test AS django-suite
USER 0
COPY requirements/app.txt requirements/django-suite.txt /tmp/requirements/
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/django-suite.txt
# The tests of exactly the Django the app runs: its source distribution, checked
# against the hash app.txt locks (the django lines are taken from there, so the
# version and hash live in one place). pip reads its metadata with the locked build
# backend installed above (--no-build-isolation). Only tests/ is kept; the suite
# imports the installed Django.
RUN awk '/^django==/ {found = 1} found {print} found && !/\\$/ {exit}' /tmp/requirements/app.txt \
      > /tmp/requirements/django-sdist.txt \
 && pip download --quiet --no-deps --no-binary=:all: --no-build-isolation --require-hashes \
      -r /tmp/requirements/django-sdist.txt -d /tmp/django-sdist \
 && mkdir /srv/django-tests \
 && tar -xzf /tmp/django-sdist/*.tar.gz -C /srv/django-tests --no-same-owner --strip-components=2 \
      --wildcards --no-wildcards-match-slash '*/tests' \
 && rm -rf /tmp/django-sdist /tmp/requirements/django-sdist.txt
COPY tests/django_suite/ /srv/django-suite/
# /srv/app for core.*; runtests.py puts its own directory first on the path.
ENV PYTHONPATH=/srv/app:/srv/django-suite
USER 10001:10001
WORKDIR /srv/django-tests
CMD ["python", "/srv/django-suite/main.py"]

# --- pebble: a real ACME CA for the test command (tests/compose.acme.yml) --------------------
# Let's Encrypt's test server, as Debian packages it; it validates HTTP-01 for
# real, against nginx on the test network. Never part of a deployment.
FROM debian:trixie-slim AS pebble
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pebble openssl curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 tests/acme/pebble-start.sh /usr/local/bin/pebble-start
CMD ["pebble-start"]
