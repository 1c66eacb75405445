#!/bin/bash
# How long an nginx worker left from before a reload may finish what it has:
# NGINX_WORKER_SHUTDOWN_TIMEOUT seconds (default 90), written into
# main.d/worker-shutdown-timeout.conf, which nginx.conf includes.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# before nginx starts. Copying it: nothing to change.
#
# Every change to the list of app servers, and every renewed certificate,
# reloads nginx: new workers take new connections, the old ones finish their
# requests. A live stream (/books/stream/) has no end of its own, so without a
# limit an old worker lives as long as any viewer keeps a page open, one more
# process per reload. At the limit nginx closes what is left; the browser
# reconnects to a new worker and resumes from its last event. The limit must
# outlast the longest response that does end (tests/test_upstream.py checks it).
# https://nginx.org/en/docs/ngx_core_module.html#worker_shutdown_timeout
set -euo pipefail

seconds=${NGINX_WORKER_SHUTDOWN_TIMEOUT:-90}
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: NGINX_WORKER_SHUTDOWN_TIMEOUT must be a whole number of seconds, not '$seconds'" >&2
    exit 1
fi
cat >/etc/nginx/main.d/worker-shutdown-timeout.conf <<CONF
# Written by /docker-entrypoint.d/18-worker-shutdown-timeout.sh when the
# container starts, from NGINX_WORKER_SHUTDOWN_TIMEOUT.
worker_shutdown_timeout  ${seconds}s;
CONF
