#!/bin/bash
# The nginx container's healthcheck: nginx answers on its own port, and the
# watcher that keeps its list of app servers (app-upstream watch) is alive.
# Run by: docker-compose.yml (healthcheck of `nginx`), as
# /usr/local/bin/nginx-healthcheck in the nginx image (Dockerfile).
# Copying it: nothing to change. Exit 0 when healthy, 1 otherwise.
#
# The watcher touches its heartbeat file after every round (every
# NGINX_UPSTREAM_INTERVAL seconds, plus a few for DNS and probes); one that
# has not for three intervals and 10 s more has stopped or hangs, and nginx
# would go on with a list of servers nobody updates. Docker marks the
# container unhealthy; nginx/entrypoint/40-app-upstream.sh restarts a watcher
# that exits by itself.
set -euo pipefail

interval=${NGINX_UPSTREAM_INTERVAL:-2}
[[ $interval =~ ^[0-9]+$ ]] || interval=2
stale_after=$((3 * interval + 10))
heartbeat=/run/app-upstream/heartbeat

curl --fail --silent --show-error --output /dev/null --max-time 3 --noproxy '*' http://127.0.0.1:8081/health \
    || { echo "healthcheck: nginx does not answer on :8081"; exit 1; }
if [[ ! -f $heartbeat ]]; then
    echo "healthcheck: no heartbeat from app-upstream watch yet"
    exit 1
fi
age=$(($(date +%s) - $(stat --format %Y "$heartbeat")))
if ((age > stale_after)); then
    echo "healthcheck: app-upstream watch last finished a round ${age} s ago (limit ${stale_after} s)"
    exit 1
fi
