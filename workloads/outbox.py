"""Sends the tasks a request queued, after its answer, confirmed by RabbitMQ.

A POST's task is committed, with its ``task.queued`` event, before anything
is sent: the row is the outbox. Here its id goes to a list that a daemon
thread sends in batches (services.send_many): each batch published, then
RabbitMQ's confirms gathered, one wait on RabbitMQ's disk for the whole
batch; while it waits, the next batch gathers. A confirmed task is marked
sent (sent_marks.py); one RabbitMQ did not confirm in time, or that a
process took with it when it died, stays unsent, and the relay sends it
once it is RELAY_MIN_AGE_SECONDS old.

Before, the request published its task itself, unconfirmed: a confirm on
the request path made POST's p99 at 200/s 60-125 ms against 17-23
(docs/benchmarks.md), and without one, a task POSTed while RabbitMQ blocked
publishers (a memory or disk alarm) and lost to a restart of RabbitMQ was
marked sent and stayed queued for good.

On the embedded broker (make run) nothing is confirmed and the request
sends at once, as before: its SQLite broker takes each message in a
transaction of its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid

from django.conf import settings
from django.db import close_old_connections

from tasklight.embedded_broker import is_embedded

# Imported first, so its exit hook, registered first, runs after ours and
# writes the marks of what ours sent.
from . import sent_marks  # noqa: F401

logger = logging.getLogger(__name__)

# The most one batch publishes before waiting for RabbitMQ's confirms.
BATCH_LIMIT = 500


class Outbox:
    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """As new, with nothing to send. A forked process calls it first: a
        lock its parent's thread held at the fork would stay held in the
        child for good; the parent sends its own tasks."""
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._tasks: list[tuple[uuid.UUID | str, str]] = []
        self._wake = threading.Event()
        self._pid: int | None = None

    def send(self, task_id: uuid.UUID | str, kind: str) -> None:
        """Sends this committed task soon, from the outbox's thread."""
        from . import services

        if is_embedded(settings.CELERY_BROKER_URL):
            services.send_many([(task_id, kind)])
            return
        with self._lock:
            self._tasks.append((task_id, kind))
            # A forked process inherits the object, not the thread.
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="tasklight-outbox", daemon=True).start()
        self._wake.set()

    def flush(self) -> int:
        """Sends what was handed over so far, once a batch being sent by the
        thread is done; returns how many it tried."""
        from . import services

        tried = 0
        with self._sending:
            while True:
                with self._lock:
                    batch, self._tasks = self._tasks[:BATCH_LIMIT], self._tasks[BATCH_LIMIT:]
                if not batch:
                    return tried
                services.send_many(batch)
                tried += len(batch)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                # send_many never raises on the broker's account; this is a bug, and the relay sends them.
                logger.exception("tasks not sent by the outbox (the relay will send them)")
            finally:
                close_old_connections()


outbox = Outbox()
os.register_at_fork(after_in_child=outbox.start_afresh)


def _flush_at_exit() -> None:
    try:
        outbox.flush()
    except Exception:
        logger.warning("the outbox's last tasks not sent at exit (the relay will send them)")


atexit.register(_flush_at_exit)
