#!/usr/bin/env bash
# The redeploy with no failed request: replace the app containers one at a time.
#
#   docker compose build && deploy/compose/rollout.sh
#
# For each running app container: start one more from the current image and
# .env, wait until it is healthy and nginx sends it requests, take the old one
# out of nginx while it still serves (app-upstream drain: nginx keeps idle
# connections to the app, and must not send a request on one the old
# container is about to close), then stop it with `docker stop`, which gives
# gunicorn the container's stop_grace_period to finish the requests in flight
# and end open streams, and remove it. The number of replicas stays as it was;
# with one, requests are still served throughout, by the new container once
# the old one drains. If a new container does not become healthy, it is
# removed, the old ones keep serving, and the script exits 1. The task worker
# is replaced last (its running task finishes or goes back in the queue); the
# database and the other one-shot steps are left as they are.
#
# Run it where you run `docker compose`; the options that pick the project
# reach compose through its own variables (COMPOSE_PROJECT_NAME, COMPOSE_FILE,
# COMPOSE_ENV_FILES). Migrations run first, once, as `docker compose up` runs
# them: they must suit the old code as well as the new, which serves alongside.
# Documented in docs/operations.md.
set -euo pipefail

# Seconds a new container may take to become healthy.
health_timeout=${ROLLOUT_HEALTH_TIMEOUT:-120}

log() { printf "rollout: %(%H:%M:%S)T %s\n" -1 "$*" >&2; }

running_app_containers() {
    docker compose ps --quiet --status running app | sort
}

wait_healthy() {
    local id=$1 deadline=$((SECONDS + health_timeout)) state
    while ((SECONDS < deadline)); do
        state=$(docker inspect --format '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
        case $state in
            running/healthy) return 0 ;;
            running/* | created/*) sleep 1 ;;
            *) log "new container ${id:0:12} is $state"; return 1 ;;
        esac
    done
    log "new container ${id:0:12} not healthy after ${health_timeout} s"
    return 1
}

mapfile -t old < <(running_app_containers)
if ((${#old[@]} == 0)); then
    log "no app container is running; start the stack with: docker compose up --detach"
    exit 1
fi
replicas=${#old[@]}

log "running migrations"
# --no-deps: the database runs already; compose must not converge it.
docker compose run --rm --no-deps migrate

for id in "${old[@]}"; do
    before=$(running_app_containers)
    docker compose up --detach --no-deps --no-recreate --scale "app=$((replicas + 1))" app
    new=$(comm -13 <(printf '%s\n' "$before") <(running_app_containers))
    if [[ -z $new || $new == *$'\n'* ]]; then
        log "expected one new app container, found: ${new:-none}"
        exit 1
    fi
    log "started ${new:0:12}, waiting until it is healthy"
    if ! wait_healthy "$new"; then
        docker rm --force "$new" >/dev/null
        log "removed ${new:0:12}; the old containers keep serving"
        exit 1
    fi
    # render, drain and undrain return once nginx's workers use the new list.
    docker compose exec -T nginx app-upstream render
    log "taking ${id:0:12} out of nginx"
    read -ra addresses < <(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id")
    docker compose exec -T nginx app-upstream drain "${addresses[@]}"
    log "draining and removing ${id:0:12}"
    docker stop "$id" >/dev/null
    docker rm "$id" >/dev/null
    # Its addresses are free again; the next new container may get one.
    docker compose exec -T nginx app-upstream undrain "${addresses[@]}"
done
log "replaced ${replicas} app container(s)"
# A project without background tasks has no worker service, or scales it to
# TASK_WORKER_REPLICAS=0 (docs/adopt.md), which `up` keeps at none.
services=$(docker compose config --services)
if grep -qx worker <<<"$services"; then
    log "replacing the task worker(s)"
    docker compose up --detach --no-deps --wait --wait-timeout "$health_timeout" worker
fi
