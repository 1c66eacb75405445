#!/usr/bin/env bash
# Restore the database from a file made by deploy/db/backup.sh: pg_restore
# inside the db container, in one transaction, so a failed restore changes
# nothing.
#
#   docker compose stop app            # no writes while the data is replaced
#   deploy/db/restore.sh backups/app-20261123T101500Z.dump
#   docker compose up --detach
#
# The tables in the backup are dropped and recreated with its rows; the
# backup must come from the same version of the app (the same migrations).
# Run it where you run `docker compose` (COMPOSE_PROJECT_NAME, COMPOSE_FILE,
# COMPOSE_ENV_FILES pick the project). Documented in docs/operations.md.
set -euo pipefail

in=${1:?usage: deploy/db/restore.sh FILE}
[[ -s $in ]] || { echo "restore: $in is missing or empty" >&2; exit 1; }

# shellcheck disable=SC2016  # expanded by the container's shell
docker compose exec -T db sh -c '
    PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") exec pg_restore \
        --clean --if-exists --no-owner --single-transaction --exit-on-error \
        --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"
' < "$in"
echo "restore: restored $in" >&2
