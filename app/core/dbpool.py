"""The bound on requests waiting for a database connection (DB_POOL_MAX_WAITING), kept true.

forget_timed_out_waiters() drops the requests psycopg_pool still counts as waiting after they gave up;
it reads the pool's internals, which tests/app/test_load_shedding.py guards.
See docs/operations.md, "Database timeouts and load shedding".
"""

from django.db import DEFAULT_DB_ALIAS, connections
from psycopg_pool import ConnectionPool


def forget_timed_out_waiters(pool: ConnectionPool | None = None) -> int:
    """Drop the requests that stopped waiting from the pool's queue; return how many there were."""
    pool = pool if pool is not None else connections[DEFAULT_DB_ALIAS].pool
    if pool is None:
        return 0
    with pool._lock:
        waiting = pool._waiting
        # A client whose wait ended has an error (its timeout) or a connection.
        live = [client for client in waiting if client.conn is None and client.error is None]
        gone = len(waiting) - len(live)
        if gone:
            waiting.clear()
            waiting.extend(live)
    return gone
