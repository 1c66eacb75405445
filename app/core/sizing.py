"""How many event loops a container runs, and how many database connections that makes.

Plain Python, no Django: gunicorn.conf.py sizes its workers with it before
Django loads, and the system check core.E003 (core.checks) adds up the
connections with it. The arithmetic is explained in docs/operations.md, "Sizing".
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cpu_limit(cgroup: Path = CGROUP) -> int | None:
    """The CPUs the container's quota allows (compose's `cpus`, a pod's CPU limit), rounded up; None if unlimited."""
    try:  # cgroup v2
        quota, period = (cgroup / "cpu.max").read_text().split()
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None


def worker_count(environ: Mapping[str, str] = os.environ, cgroup: Path = CGROUP) -> int:
    """GUNICORN_WORKERS if set, else one event loop per CPU of the container's limit, else per visible core.

    Raises ValueError, naming the variable, for anything but a whole number of at least 1.
    """
    raw = environ.get("GUNICORN_WORKERS", "").strip()
    if not raw:
        return cpu_limit(cgroup) or os.process_cpu_count() or 1
    try:
        workers = int(raw)
    except ValueError:
        raise ValueError(f"GUNICORN_WORKERS must be a whole number, not {raw!r}") from None
    if workers < 1:
        raise ValueError(f"GUNICORN_WORKERS must be at least 1, not {workers}")
    return workers


# Connections a task worker's pool holds at most (app/worker/run.py sets it).
TASK_WORKER_POOL_SIZE = 2


@dataclass(frozen=True)
class ConnectionBudget:
    """The most connections the app's processes may hold at once, term by term."""

    replicas: int  # APP_REPLICAS: app containers (pods, instances) in normal operation
    workers: int  # worker_count(): processes per container, one pool each
    pool_max: int  # DB_POOL_MAX_SIZE
    spare: int  # DB_SPARE_CONNECTIONS: psql, a backup, a monitoring agent
    worker_replicas: int = 0  # TASK_WORKER_REPLICAS: task worker containers (app/worker)

    @property
    def surge(self) -> int:
        # A rolling deploy starts one container more before it stops an old
        # one (deploy/compose/rollout.sh, Kubernetes' maxSurge: 1).
        return 1

    @property
    def per_worker(self) -> int:
        # Its pool, and the one connection that LISTENs for live updates
        # (books/live.py), outside the pool.
        return self.pool_max + 1

    @property
    def migrate(self) -> int:
        # The migrate step is one process with a pool like a worker's; it can
        # run beside a full set of replicas.
        return self.pool_max

    @property
    def per_task_worker(self) -> int:
        # The worker's own pool (app/worker/run.py): one connection for its
        # loop and the task it runs, one for a task that queries from a thread.
        return TASK_WORKER_POOL_SIZE

    @property
    def task_workers(self) -> int:
        # Its rolling deploy also starts one more before it stops one.
        return (self.worker_replicas + self.surge) * self.per_task_worker if self.worker_replicas else 0

    @property
    def total(self) -> int:
        web = (self.replicas + self.surge) * self.workers * self.per_worker
        return web + self.task_workers + self.migrate + self.spare

    def explain(self) -> str:
        return (
            f"(APP_REPLICAS {self.replicas} + {self.surge} during a rolling deploy) x {self.workers} workers "
            f"(GUNICORN_WORKERS, else the container's CPU limit, APP_CPUS) x (DB_POOL_MAX_SIZE {self.pool_max} "
            f"+ 1 listening for live updates) + (TASK_WORKER_REPLICAS {self.worker_replicas} + {self.surge}) "
            f"x {self.per_task_worker} for the task workers + {self.migrate} for the migrate step "
            f"+ DB_SPARE_CONNECTIONS {self.spare} = {self.total}"
        )
