"""Checks of kept database connections before use: the web process's pool
(settings.py passes ``check_pooled_connection`` as its check) and a worker's
connection kept from task to task (``skip_check_if_just_used``).

Both skip the check of a connection that was handed out or used within the
last ``RECENTLY_USED_SECONDS``, as HikariCP does (its ``aliveBypassWindowMs``,
500 ms): under load that is nearly every one, and the check is a round trip
to PostgreSQL per request or task (docs/benchmarks.md). A connection that
broke in use is never handed out again (the pool discards it on return,
Django closes it); one that broke while it sat idle for less than that - a
PostgreSQL restarted within half a second - fails its request with a 503, or
its task's first statement, which the task retries (workloads/tasks.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any
from weakref import WeakKeyDictionary

from django.db import InterfaceError, OperationalError, connection, connections
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

RECENTLY_USED_SECONDS = 0.5

# What a database that went away raises (Django's wrappers of the driver's
# errors): a reason to wait and try again, never a 500 nor a lost task.
DATABASE_DOWN = (OperationalError, InterfaceError)

# When each connection (psycopg's) was last handed out or used; weak, so
# that a closed and dropped connection leaves nothing behind.
_used_at: WeakKeyDictionary[Any, float] = WeakKeyDictionary()


def _used_recently(conn: Any) -> bool:
    try:
        last = _used_at.get(conn)
    except TypeError:  # no weak reference to it: sqlite3's (embedded mode), whose check is free
        return False
    return last is not None and time.monotonic() - last < RECENTLY_USED_SECONDS


def _note_use(conn: Any) -> None:
    with contextlib.suppress(TypeError):  # as above
        _used_at[conn] = time.monotonic()


def check_pooled_connection(conn: Any) -> None:
    """The check the pool runs on a connection before handing it out
    (Django's default, ``ConnectionPool.check_connection``), plus a sweep;
    none for a connection handed out within RECENTLY_USED_SECONDS.

    A broken idle connection means PostgreSQL went away, and every other idle
    connection of the pool is broken too. Alone, the pool finds that out one
    connection per try, sleeping 1, 2, 4 s between tries: a web process whose
    pool had grown to a dozen connections answered 503 (its 10 s timeout) to
    the first requests after a restart. Here the first broken one has the
    pool check all its idle connections at once and replace the broken ones,
    so the request's next try, a second later, finds a new connection
    (tests/test_faults.py)."""
    if not _used_recently(conn):
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            pool = getattr(connections["default"], "pool", None)  # the PostgreSQL backend's
            if pool is not None:
                logger.warning("a pooled database connection was broken: checking the pool's idle connections")
                pool.check()  # checks with the static check, never this function
            raise
    _note_use(conn)


def skip_check_if_just_used() -> None:
    """After ``close_old_connections()``, which has Django check a kept
    connection (CONN_HEALTH_CHECKS: a ``SELECT 1``) before its next
    statement: no check if this thread's connection was used within
    RECENTLY_USED_SECONDS (``mark_used``). For a worker's pool process, which
    runs one task at a time on one thread."""
    if connection.connection is not None and _used_recently(connection.connection):
        # Django's own flag (BaseDatabaseWrapper, not in its type stubs): checked already.
        connection.health_check_done = True  # type: ignore[attr-defined]


def mark_used() -> None:
    """This thread's connection has just served (a task, in a worker)."""
    if connection.connection is not None:
        _note_use(connection.connection)


def database_away() -> bool:
    """After an error: whether the database itself went away, not just this
    thread's connection. True when the connection is gone (none open, or
    broken: the server or the network between went away) and a new one
    cannot be made now either. False after an error on a connection still
    usable (a deadlock, a constraint: the statement's), and when a new
    connection is made at once (one backend ended, by an administrator or
    by a timeout that the session's own doing set off): the new connection
    stays open for the next statement. With the database silent, the new
    connection waits out connect_timeout (10 s) in this thread first."""
    raw = connection.connection
    # psycopg's connection says so; sqlite3's has neither attribute, and its
    # file does not go away.
    if raw is not None and not (getattr(raw, "closed", False) or getattr(raw, "broken", False)):
        return False
    connection.close()
    try:
        connection.ensure_connection()
    except DATABASE_DOWN:
        return True
    return False
