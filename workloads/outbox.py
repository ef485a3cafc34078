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
import uuid

from django.conf import settings

from tasklight.embedded_broker import is_embedded

from . import sent_marks
from .batches import Batches

logger = logging.getLogger(__name__)


class Outbox(Batches[tuple[uuid.UUID | str, str]]):
    NAME = "tasklight-outbox"
    # The most one batch publishes before waiting for RabbitMQ's confirms.
    LIMIT = 500
    LOST_AT_EXIT = "the outbox's last tasks not sent at exit (the relay will send them)"

    def send(self, task_id: uuid.UUID | str, kind: str) -> None:
        """Sends this committed task soon, from the outbox's thread."""
        if is_embedded(settings.CELERY_BROKER_URL):
            self.handle([(task_id, kind)])
            return
        self.add((task_id, kind))

    def handle(self, batch: list[tuple[uuid.UUID | str, str]]) -> None:
        from . import services

        services.send_many(batch)  # never raises on the broker's account; what it did not send, the relay will

    def failed(self, exc: Exception) -> None:
        logger.exception("tasks not sent by the outbox (the relay will send them)")

    def flush_at_exit(self) -> None:
        super().flush_at_exit()
        # Then the marks of what it just sent, whatever order the exit hooks run in.
        sent_marks.sent_marks.flush_at_exit()


outbox = Outbox()
os.register_at_fork(after_in_child=outbox.start_afresh)
atexit.register(outbox.flush_at_exit)
