"""Writes ``Task.sent_at`` in batches, off the request path.

``sent_at`` tells the relay which queued tasks the broker has accepted. One
UPDATE per task, in the request that queued it, was ~5 % of the web process's
CPU under load and a round trip before the answer (docs/benchmarks.md). Here
the ids go to a list that a daemon thread writes every BATCH_SECONDS, in one
UPDATE. The relay only looks at tasks RELAY_MIN_AGE_SECONDS old (5 s), long
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
import threading
import time
import uuid

from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from .models import Task

logger = logging.getLogger(__name__)

BATCH_SECONDS = 0.05


class SentMarks:
    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """As new, with no marks. A forked process (Celery's prefork pool)
        calls it first: a lock its parent's thread held at the fork would
        stay held in the child for good; the parent writes its own marks."""
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._ids: list[uuid.UUID | str] = []
        self._wake = threading.Event()
        self._pid: int | None = None

    def add(self, task_id: uuid.UUID | str) -> None:
        if connection.vendor != "postgresql":
            write([task_id])
            return
        with self._lock:
            self._ids.append(task_id)
            # A forked process (Celery's prefork pool) inherits the object, not the thread.
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="tasklight-sent-marks", daemon=True).start()
        self._wake.set()

    def flush(self) -> int:
        """Writes the marks gathered so far, once a batch being written by
        the thread is done; returns how many it wrote."""
        with self._writing:
            with self._lock:
                ids, self._ids = self._ids, []
            if ids:
                write(ids)
        return len(ids)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(BATCH_SECONDS)  # lets the batch gather
            try:
                self.flush()
            except DatabaseError as exc:
                logger.warning("sent_at of a batch of tasks not written (the relay will send them again): %s", exc)
            finally:
                close_old_connections()


def write(ids: list[uuid.UUID | str]) -> None:
    Task.objects.filter(pk__in=ids, sent_at__isnull=True).update(sent_at=timezone.now())


sent_marks = SentMarks()
os.register_at_fork(after_in_child=sent_marks.start_afresh)


def _flush_at_exit() -> None:
    try:
        sent_marks.flush()
    except Exception:
        logger.warning("sent_at of the last tasks not written at exit (the relay will send them again)")


atexit.register(_flush_at_exit)
