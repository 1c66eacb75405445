#!/usr/bin/env bash
# Back up the database to a file: pg_dump inside the db container, in
# pg_dump's custom format (compressed; restored with deploy/db/restore.sh).
#
#   deploy/db/backup.sh backups/app-$(date -u +%Y%m%dT%H%M%SZ).dump
#
# The app keeps serving: pg_dump reads one consistent snapshot. Run it where
# you run `docker compose`; the options that pick the project reach compose
# through its own variables (COMPOSE_PROJECT_NAME, COMPOSE_FILE,
# COMPOSE_ENV_FILES). The file holds all the data: keep it as safe as the
# database. Documented in docs/operations.md.
set -euo pipefail

out=${1:?usage: deploy/db/backup.sh FILE}
partial="$out.partial"
trap 'rm -f "$partial"' EXIT

# The password comes from the file Postgres itself was given, inside the
# container; it never appears on a command line or in a log.
# shellcheck disable=SC2016  # expanded by the container's shell
docker compose exec -T db sh -c '
    PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") exec pg_dump \
        --format=custom --no-owner --username="$POSTGRES_USER" --dbname="$POSTGRES_DB"
' > "$partial"
mv "$partial" "$out"
echo "backup: wrote $out ($(wc -c < "$out") bytes)" >&2
