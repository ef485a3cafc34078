from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections


class Command(BaseCommand):
    help = "Applies migrations to every configured database (the embedded channel layer has its own)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive")

    def handle(self, *args: Any, **options: Any) -> None:
        # Releases started at once (one per machine, or an init container per
        # pod) take turns: two migrations of one database at once fail (a
        # duplicate type or table); the second finds nothing left to apply.
        with release_lock():
            for alias in settings.DATABASES:
                call_command(
                    "migrate", database=alias, interactive=options["interactive"], verbosity=options["verbosity"]
                )


# pg_advisory_lock's key: any number of this application's own.
RELEASE_LOCK_KEY = 0x7461736B6C6967  # "tasklig"
RELEASE_LOCK_POLL_SECONDS = 0.5


@contextmanager
def release_lock() -> Iterator[None]:
    """PostgreSQL's session advisory lock on the default database, held on a
    connection of its own for the whole release (migrate closes and opens
    Django's); nothing elsewhere (SQLite: one machine, one release)."""
    if connections["default"].vendor != "postgresql":
        yield
        return
    import psycopg

    params = connections["default"].get_connection_params()
    # Autocommit, and asked for again and again rather than waited for: an
    # open transaction, or a statement waiting for the lock, holds a snapshot,
    # and CREATE INDEX CONCURRENTLY (tasklight/online_migrations.py) waits
    # for every such snapshot to end: the release holding the lock would wait
    # for the one waiting for it, for ever.
    with psycopg.connect(**params, autocommit=True) as lock_connection:
        while lock_connection.execute("SELECT pg_try_advisory_lock(%s)", [RELEASE_LOCK_KEY]).fetchone() != (True,):
            time.sleep(RELEASE_LOCK_POLL_SECONDS)
        yield
