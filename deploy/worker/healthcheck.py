"""The task worker's healthcheck: healthy while its heartbeat is fresh and no task overstays.

Run by: docker-compose.yml (healthcheck of `worker`), Kubernetes' liveness
probe, ECS' health check. The worker (app/worker/run.py) rewrites
/tmp/task-worker.json every second with the task it runs and since when.
Exit 1, "stuck", when that file is older than STALE_SECONDS (the process hangs)
or a task has run longer than its TASK_TIME_LIMIT; the platform then replaces
the worker, and the reaper puts the task back in the queue. Standard library
only: no Django start-up, no database connection per probe.
"""

import json
import sys
import time
from pathlib import Path

HEARTBEAT = Path("/tmp/task-worker.json")  # noqa: S108 (the worker's own tmpfs)
STALE_SECONDS = 30


def verdict(state: dict, now: float) -> str | None:
    """What is wrong, or None when the worker is healthy."""
    if now - state["beat"] > STALE_SECONDS:
        return f"no heartbeat for {now - state['beat']:.0f} s: the worker process hangs"
    if state.get("task") and now - state["task_since"] > state["time_limit"]:
        return (
            f"task {state['task']} has run {now - state['task_since']:.0f} s, "
            f"more than TASK_TIME_LIMIT ({state['time_limit']:.0f} s)"
        )
    return None


if __name__ == "__main__":
    try:
        problem = verdict(json.loads(HEARTBEAT.read_text()), time.time())
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"no readable heartbeat in {HEARTBEAT} ({error}): the worker has not started"
    if problem:
        print(f"healthcheck: {problem}", file=sys.stderr)
        sys.exit(1)
