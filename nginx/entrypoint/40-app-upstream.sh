#!/bin/bash
# Finds the app before nginx starts, then keeps following it.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# after the templates are rendered and before nginx starts.
# Copying it: nothing to change; the settings are app-upstream's
# (nginx/upstream/app-upstream).
#
# `app-upstream start` waits up to 30 s for the app's name to resolve and
# writes the upstream{} block; `app-upstream watch`, left running beside
# nginx, re-reads DNS every few seconds, so app containers added or replaced
# are found, and reloads nginx when the list changes.
set -euo pipefail

app-upstream start
app-upstream watch </dev/null &
