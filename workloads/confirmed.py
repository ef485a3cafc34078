"""Producers whose messages RabbitMQ confirms, for the tasks a worker sends.

A task the relay sends, or a worker sends back to the queue, counts as sent
(``sent_at``) only once RabbitMQ has confirmed its message (publisher
confirms: it is on RabbitMQ's disk). Without a confirm, a send "succeeded"
once its bytes were in a socket's buffer: with RabbitMQ blocking publishers
(a memory or disk alarm), an operator restarting RabbitMQ before the alarm
cleared lost those messages while their tasks, marked sent, stayed queued
(or running) for good. A POST's own send is not confirmed: a confirm waits
for RabbitMQ's disk, too long for the request path (docs/lifecycle.md).

Only those messages go through these, on connections of their own.
Celery's other messages (a worker's heartbeat events, its answers to
remote control) keep Celery's connections, unconfirmed: its worker's main
process sends its heartbeat event every 2 s from the loop that takes and
acknowledges tasks, and waiting there for a confirm that an alarm withholds
held that loop for the whole alarm (seen: a task due then ran a minute late).

Every read and write on these connections is bounded by
BROKER_PUBLISH_TIMEOUT too (``SO_RCVTIMEO``, ``SO_SNDTIMEO``): closing a
connection to a RabbitMQ that blocks publishers waited for its answer for
good. The embedded broker writes each message in a transaction of its own
and has nothing to confirm: Celery's own producers serve it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from kombu import Producer
from kombu.pools import ProducerPool

from tasklight.celery import app
from tasklight.embedded_broker import is_embedded


class ConfirmedProducers:
    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """Without a pool. A forked process (Celery's prefork pool) calls it
        first: its parent's connections are its parent's (dropped here
        unclosed, as Celery drops its own pool in a forked process)."""
        self._lock = threading.Lock()
        self._pool: Any = None  # a kombu ProducerPool (its type stubs lack most of it)

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Producer | None]:
        """A producer with confirms, back in the pool on leaving (its
        connection replaced if the block raised); None on the embedded
        broker, for Celery's own."""
        if is_embedded(settings.CELERY_BROKER_URL):
            yield None
            return
        with self._pool_of_this_process().acquire(block=True) as producer:
            yield producer

    def _pool_of_this_process(self) -> Any:
        with self._lock:
            if self._pool is None:
                options = {
                    **(app.conf.broker_transport_options or {}),
                    "confirm_publish": True,
                    "read_timeout": settings.BROKER_PUBLISH_TIMEOUT,
                    "write_timeout": settings.BROKER_PUBLISH_TIMEOUT,
                }
                connection: Any = app.connection_for_write(transport_options=options)
                limit = app.conf.broker_pool_limit
                self._pool = ProducerPool(connection.Pool(limit=limit), limit=limit)  # type: ignore[call-arg]
            return self._pool


producers = ConfirmedProducers()
os.register_at_fork(after_in_child=producers.start_afresh)
