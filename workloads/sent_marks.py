"""Writes ``Task.sent_at`` in batches, off the request path.

``sent_at`` tells the relay which queued tasks the broker has accepted. One
UPDATE per task, in the request that queued it, was ~5 % of the web process's
CPU under load and a round trip before the answer (docs/benchmarks.md). Here
the ids go to a list that a daemon thread (batches.py) writes every
BATCH_SECONDS, in one UPDATE. The relay only looks at tasks RELAY_MIN_AGE_SECONDS old (5 s), long
after their mark is written. A mark lost with its process (killed before the
next batch) makes the relay send that task once more, which is harmless: a
task sent twice runs once (services.start_task).

On SQLite (embedded mode) a second writer thread would only contend for the
database's one write lock: there the mark is written at once, as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import uuid

from django.db import DatabaseError, connection
from django.utils import timezone

from .batches import Batches
from .models import Task

logger = logging.getLogger(__name__)

BATCH_SECONDS = 0.05


class SentMarks(Batches[uuid.UUID | str]):
    NAME = "tasklight-sent-marks"
    GATHER_SECONDS = BATCH_SECONDS
    LOST_AT_EXIT = "sent_at of the last tasks not written at exit (the relay will send them again)"

    def add_all(self, items: list[uuid.UUID | str]) -> None:
        if connection.vendor != "postgresql":
            write(items)
            return
        super().add_all(items)

    def handle(self, batch: list[uuid.UUID | str]) -> None:
        write(batch)

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, DatabaseError):
            logger.warning("sent_at of a batch of tasks not written (the relay will send them again): %s", exc)
        else:
            super().failed(exc)


def write(ids: list[uuid.UUID | str]) -> None:
    Task.objects.filter(pk__in=ids, sent_at__isnull=True).update(sent_at=timezone.now())


sent_marks = SentMarks()
os.register_at_fork(after_in_child=sent_marks.start_afresh)
atexit.register(sent_marks.flush_at_exit)
