#!/bin/bash
# Finds the app before nginx starts, then keeps following it.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# after the templates are rendered and before nginx starts.
# Copying it: nothing to change; the settings are app-upstream's
# (nginx/upstream/app-upstream).
#
# `app-upstream start` waits up to 30 s for an app address that answers
# /healthz and writes the upstream{} block; `app-upstream watch`, left running
# beside nginx, does a round every few seconds (DNS, health probes), so app
# containers added, replaced or failing are followed, and reloads nginx when
# the list changes. If the watcher ever exits, it is started again; if it
# stops or hangs, its heartbeat goes stale and nginx's healthcheck fails
# (nginx/healthcheck.sh).
set -euo pipefail

# The entrypoint runs these scripts for `nginx -t` too (a configuration
# test): that needs the file, not an app, so it neither waits nor watches.
# The entrypoint's arguments are those of the shell that runs this script.
read -ra entrypoint < <(tr '\0' ' ' < "/proc/$PPID/cmdline" 2>/dev/null) || true  # no newline: read says EOF
for arg in "${entrypoint[@]}"; do
    if [[ $arg == -t || $arg == -T ]]; then
        app-upstream render
        exit 0
    fi
done

app-upstream start
(
    while true; do
        status=0
        app-upstream watch || status=$?
        echo "app-upstream: the watcher exited (status $status); starting it again" >&2
        sleep 1
    done
) </dev/null &
