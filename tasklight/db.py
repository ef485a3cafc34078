"""The web process's PostgreSQL pool: the one thing psycopg_pool does not do
on its own (settings.py passes ``check_pooled_connection`` as its check)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)


def check_pooled_connection(conn: Any) -> None:
    """The check the pool runs on a connection before handing it out
    (Django's default, ``ConnectionPool.check_connection``), plus a sweep.

    A broken idle connection means PostgreSQL went away, and every other idle
    connection of the pool is broken too. Alone, the pool finds that out one
    connection per try, sleeping 1, 2, 4 s between tries: a web process whose
    pool had grown to a dozen connections answered 503 (its 10 s timeout) to
    the first requests after a restart. Here the first broken one has the
    pool check all its idle connections at once and replace the broken ones,
    so the request's next try, a second later, finds a new connection
    (tests/test_faults.py)."""
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        pool = getattr(connections["default"], "pool", None)  # the PostgreSQL backend's
        if pool is not None:
            logger.warning("a pooled database connection was broken: checking the pool's idle connections")
            pool.check()  # checks with the static check, never this function
        raise
