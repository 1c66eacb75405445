# The images of the stack, built by `docker compose build` (docker-compose.yml):
#   app    the Django app under gunicorn with Uvicorn workers (also runs migrations)
#   nginx  the official nginx image with this project's config and the static files
#   test   the app image plus the app's own test tools (tests/app)
#   bench  the app image plus the servers the benchmark races it against (bench/)
# Copying it: change the paths in the `build` stage if your project is laid out
# differently. Base images are pinned by tag; to pin a digest, pass one, e.g.
#   docker compose build --build-arg PYTHON_IMAGE=python:3.13-slim-trixie@sha256:...
ARG PYTHON_IMAGE=python:3.13-slim-trixie
ARG NGINX_IMAGE=nginx:1.30-trixie

# --- base: what every Python stage shares ------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=config.settings

# --- build: dependencies, bytecode and static files; discarded afterwards -----------
FROM base AS build
RUN python -m venv /opt/venv
COPY requirements/app.txt /tmp/requirements/app.txt
# Wheels only: nothing is compiled, so the image needs no compiler.
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements/app.txt
COPY app/ /srv/app/
COPY deploy/gunicorn/ /srv/deploy/gunicorn/
COPY deploy/app/ /srv/deploy/app/
# Bytecode compiled once here: the app runs on a read-only filesystem. The
# hash-based .pyc files stay valid whatever timestamps the copy gives them.
RUN python -m compileall -q --invalidation-mode unchecked-hash /opt/venv /srv/app /srv/deploy
# Hashed names and gzipped copies, for nginx and WhiteNoise alike;
# collectstatic runs only the staticfiles checks, so no secret is needed.
WORKDIR /srv/app
RUN python manage.py collectstatic --noinput --verbosity 0

# --- app: the production image ---------------------------------------------------------
FROM base AS app
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /srv --no-create-home --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0755 /srv/secrets
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/app /srv/app
COPY --from=build /srv/deploy /srv/deploy
COPY --from=build /srv/static /srv/static
USER 10001:10001
WORKDIR /srv/app
EXPOSE 8000
CMD ["gunicorn", "-c", "/srv/deploy/gunicorn/gunicorn.conf.py"]

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
COPY bench/raw_asgi.py bench/stock_asgi.py /srv/bench/
USER 10001:10001

# --- nginx: the front door, with the static files baked in -------------------------------
FROM ${NGINX_IMAGE} AS nginx
RUN rm -f /etc/nginx/conf.d/default.conf
COPY nginx/nginx.conf /etc/nginx/nginx.conf
COPY nginx/templates/ /etc/nginx/templates/
# Keeps nginx's list of app servers in step with DNS (nginx/upstream/app-upstream),
# started by the image's entrypoint before nginx (nginx/entrypoint/40-app-upstream.sh).
COPY --chmod=0755 nginx/upstream/app-upstream /usr/local/bin/app-upstream
COPY --chmod=0755 nginx/entrypoint/ /docker-entrypoint.d/
COPY --from=build /srv/static /srv/static
