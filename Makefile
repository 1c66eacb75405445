# The everyday commands, one word each: `make help` lists them.
# Read by: make, from the repository's root. Each target is one documented
# command (README, docs/operations.md), so copying a line to a shell works too.
# Variables: make backup FILE=..., make restore FILE=..., make logs SERVICE=app.

COMPOSE ?= docker compose
DEV = $(COMPOSE) -f docker-compose.yml -f deploy/compose/dev.yml
# The stack plus the test image (tests/compose.test.yml), for the app's own tests.
COMPOSE_TEST ?= $(COMPOSE) -f docker-compose.yml -f tests/compose.test.yml
SERVICE ?=
FILE ?= backups/app-$(shell date -u +%Y%m%dT%H%M%SZ).dump

.DEFAULT_GOAL := help
.PHONY: help up down logs ps test lint test-app bench migrate createsuperuser shell psql backup restore dev rollout check

help: ## List the commands
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

up: ## Build and start the stack in the background, wait until it is healthy
	$(COMPOSE) up --build --detach --wait

down: ## Stop and remove the containers (the database volume is kept)
	$(COMPOSE) down

logs: ## Follow the logs (all services, or SERVICE=app)
	$(COMPOSE) logs --follow $(SERVICE)

ps: ## Show the services and their health
	$(COMPOSE) ps --all

dev: ## Start the development loop: DEBUG on, code reload, same Postgres
	$(DEV) up --build

test: ## Run the test command (lint, the app's tests, the stack from outside)
	tests/run

lint: ## Only the linters of the test command (ruff, hadolint, compose, nginx -t, actionlint, zizmor)
	tests/run tests/test_lint.py

test-app: ## Only the app's own tests (tests/app), in the test image against Postgres
	$(COMPOSE_TEST) run --rm tests

bench: ## Run the benchmark (about 20 minutes; bench/run --help for options)
	bench/run

migrate: ## Apply migrations (the stack runs them at every `up` too)
	$(COMPOSE) run --rm migrate

createsuperuser: ## Create an admin user, asking for the details
	$(COMPOSE) exec app python manage.py createsuperuser

shell: ## A Django shell in the app container
	$(COMPOSE) exec app python manage.py shell

psql: ## psql in the database container
	$(COMPOSE) exec db sh -c 'psql -U "$$POSTGRES_USER" -d "$$POSTGRES_DB"'

backup: ## Back up the database to FILE (default backups/app-<time>.dump)
	@mkdir -p $(dir $(FILE))
	deploy/db/backup.sh $(FILE)

restore: ## Restore the database from FILE=... (stop the app first: docker compose stop app)
	@test -n "$(FILE)" && test -s "$(FILE)" || { echo "make restore FILE=path/to/backup.dump" >&2; exit 1; }
	deploy/db/restore.sh $(FILE)

rollout: ## Replace the app containers one at a time, with no failed request
	$(COMPOSE) build && deploy/compose/rollout.sh

check: ## Django's deployment checks in the running app
	$(COMPOSE) exec app python manage.py check --deploy
