"""The bound on requests waiting for a database connection (DB_POOL_MAX_WAITING), kept true.

psycopg_pool counts a request that gave up waiting (PoolTimeout) as waiting
until a connection is handed to the queue, which skips it then. While the
database is gone no connection ever is, so after max_waiting timeouts the
queue is full of requests long gone: every request is turned away with
TooManyRequests, which also stops the pool from opening a connection, and the
app would stay down after the database is back. forget_timed_out_waiters()
drops them; core.middleware.DatabaseUnavailableMiddleware calls it whenever the
pool turns a request away. It reads psycopg_pool's internals (_lock, _waiting,
WaitingClient.conn and .error): tests/app/test_load_shedding.py fails
if they or that behaviour change.
https://www.psycopg.org/psycopg3/docs/api/pool.html#psycopg_pool.ConnectionPool
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
