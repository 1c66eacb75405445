#!/bin/bash
# Finds the app before nginx starts, then keeps following it.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# after the templates are rendered and before nginx starts.
# Copying it: nothing to change; the settings are app-upstream's
# (nginx/upstream/app-upstream).
#
# It waits up to 30 s for the app's name
# to resolve, writes the upstream{} block, and leaves `app-upstream watch`
# running beside nginx: it re-reads DNS every few seconds, so app containers
# added or replaced are found, and reloads nginx when the list changes.
set -euo pipefail

host=${NGINX_UPSTREAM%:*}
host=${host#[}
host=${host%]}
for ((i = 0; i < 30; i++)); do
    getent ahosts "$host" >/dev/null 2>&1 && break
    sleep 1
done
app-upstream render
app-upstream watch </dev/null &
