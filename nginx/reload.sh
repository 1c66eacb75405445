#!/bin/bash
# Reloads nginx's configuration and returns once nginx serves with it.
# Run by: nginx/upstream/app-upstream (a new list of app servers) and
# nginx/entrypoint/41-certificate-reload.sh (a renewed certificate), as
# /usr/local/bin/nginx-reload in the nginx image (Dockerfile).
# Copying it: nothing to change. Exit 0 once no worker with the previous
# configuration takes a new connection, or when nginx is not running yet;
# 1 if nginx refuses the configuration (with its message) or has not started
# serving with it within 10 s (nginx's error log says why).
#
# `nginx -s reload` only signals the master, which then starts new workers and
# tells the old ones to finish what they have; until then an old worker can
# still accept a connection and answer it with the old configuration. A worker
# told to stop renames itself ("worker process is shutting down") before it
# closes its listening sockets, so the wait is for every worker that had the
# working title before the reload to lose it.
# https://nginx.org/en/docs/control.html#reconfiguration
set -euo pipefail

# The pids of the master's children under the working title of a worker.
accepting_workers() {
    local master=$1 dir stat ppid title
    for dir in /proc/[0-9]*; do
        IFS= read -r stat 2>/dev/null < "$dir/stat" || continue
        read -r _ ppid _ <<<"${stat##*)}"
        ((ppid == master)) || continue
        IFS= read -r -d '' title 2>/dev/null < "$dir/cmdline" || true
        if [[ $title == "nginx: worker process" ]]; then echo "${dir#/proc/}"; fi
    done
}

master=$(cat /run/nginx.pid 2>/dev/null) || exit 0
[[ -n $master ]] && kill -0 "$master" 2>/dev/null || exit 0
before=$(accepting_workers "$master")
# nginx reads the configuration before it signals: a broken one stops here,
# and the workers keep the configuration they have.
if ! said=$(nginx -s reload 2>&1); then
    echo "nginx-reload: nginx refused the configuration and serves with the previous one: ${said//$'\n'/ }" >&2
    exit 1
fi
for ((i = 0; i < 100; i++)); do
    grep -qxF -f <(accepting_workers "$master") <<<"$before" || exit 0
    sleep 0.1
done
echo "nginx-reload: nginx's workers still have the previous configuration after 10 s" >&2
exit 1
