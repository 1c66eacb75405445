"""The task worker's healthcheck (compose, Kubernetes' liveness probe, ECS): healthy while its heartbeat is fresh.

Exit 1, "stuck", when /tmp/task-worker.json (rewritten every second by app/worker/run.py) is older than
STALE_SECONDS or its task has outrun TASK_TIME_LIMIT. Standard library only: no Django start-up, no database
connection per probe. See docs/tasks.md, "The backend, chosen on the evidence".
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
