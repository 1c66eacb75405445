"""Who a worker is, as Postgres sees it: the reaper tells a dead worker from a busy one by its connections.

Every connection a worker opens carries application_name "task-worker <id>",
so pg_stat_activity lists the workers alive right now, whatever they are
doing; a task RUNNING under an id with no connection has lost its worker.
"""

import os
import secrets
import socket

PREFIX = "task-worker "


def worker_id() -> str:
    """Unique across the fleet and across restarts, and readable: host name, process id, a part new at each start.

    The host name and pid alone repeat when a container restarts in place (pid
    1 again): the new worker would pass for the one that died, and its task
    would never be reaped. With its prefix, 63 bytes at most: Postgres cuts application_name there.
    """
    return f"{socket.gethostname()[:30]}-{os.getpid()}-{secrets.token_hex(4)}"


def application_name(worker: str) -> str:
    return PREFIX + worker
