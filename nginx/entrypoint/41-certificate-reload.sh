#!/bin/bash
# With NGINX_TLS=on: reloads nginx when the acme service hands it a new
# certificate, so a renewal needs no restart and drops no connection (nginx
# starts new workers with it; the old ones finish their requests and streams,
# for up to NGINX_WORKER_SHUTDOWN_TIMEOUT: 18-worker-shutdown-timeout.sh).
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# before nginx starts. Copying it: nothing to change.
#
# The acme service swaps /etc/nginx/certs/live, a symlink, to a new directory
# in one rename (deploy/acme/acme.py); this looks every
# NGINX_CERTIFICATE_INTERVAL seconds where it points. A certificate nginx
# refuses (`nginx -t`) is logged and not loaded: nginx keeps serving the last.
set -euo pipefail
[[ ${NGINX_TLS:-off} == on ]] || exit 0

interval=${NGINX_CERTIFICATE_INTERVAL:-10}
if ! [[ $interval =~ ^[1-9][0-9]*$ ]]; then
    echo "41-certificate-reload.sh: NGINX_CERTIFICATE_INTERVAL must be a whole number of seconds, not '$interval'" >&2
    exit 1
fi
live=/etc/nginx/certs/live

log() {  # one JSON line, as nginx's access log and the app write theirs
    printf '{"time": "%(%Y-%m-%dT%H:%M:%S%z)T", "level": "%s", "logger": "nginx.certificate", "message": "%s"}\n' \
        -1 "$1" "${2//\"/\'}" >&2
}

(
    loaded=$(readlink "$live" || true)
    while sleep "$interval"; do
        current=$(readlink "$live" || true)
        [[ -n $current && $current != "$loaded" ]] || continue
        if ! problem=$(nginx -t -q 2>&1); then
            log error "certificate $current not loaded, still serving $loaded: ${problem//$'\n'/ }"
        elif nginx-reload; then
            log info "certificate $current loaded (was $loaded)"
        else
            log error "certificate $current not in use 10 s after the reload (nginx's error log says why)"
        fi
        loaded=$current
    done
) </dev/null &
