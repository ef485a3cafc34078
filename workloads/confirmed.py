"""Connections whose messages RabbitMQ confirms, for every task sent.

A task counts as sent (``sent_at``) only once RabbitMQ has confirmed its
message (publisher confirms: it is on RabbitMQ's disk). Without a confirm, a
send "succeeded" once its bytes were in a socket's buffer: with RabbitMQ
blocking publishers (a memory or disk alarm), an operator restarting
RabbitMQ before the alarm cleared lost those messages while their tasks,
marked sent, stayed queued (or running) for good.

Confirms are pipelined: a batch of messages is published, then RabbitMQ's
answers are gathered (it numbers a channel's messages 1, 2, ... and answers
by number, often for several at once). So a batch waits for one round trip
to RabbitMQ's disk, not one per message: a POST hands its task to a thread
that sends in batches (workloads/outbox.py), and the relay sends its
hundreds in one.

Only task messages go through these, on connections of their own. Celery's
other messages (a worker's heartbeat events, its answers to remote control)
keep Celery's connections, unconfirmed: its worker's main process sends its
heartbeat event every 2 s from the loop that takes and acknowledges tasks,
and waiting there for a confirm that an alarm withholds held that loop for
the whole alarm (seen: a task due then ran a minute late).

Every read and write on these connections is bounded by
BROKER_PUBLISH_TIMEOUT (``SO_RCVTIMEO``, ``SO_SNDTIMEO``). A connection on
which anything failed is dropped, its socket closed without the closing
handshake: closing a connection to a RabbitMQ that blocks publishers waited
for its answer for good. The embedded broker writes each message in a
transaction of its own and has nothing to confirm: Celery's own producers
serve it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

from amqp import spec  # type: ignore[attr-defined]  # its stubs lack it
from django.conf import settings
from kombu import Producer

from tasklight.celery import app
from tasklight.embedded_broker import is_embedded


class Confirms:
    """RabbitMQ's answers to what one channel published, from when it was
    put in confirm mode."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.published = 0
        self.waiting: dict[int, Any] = {}  # a message's number on the channel: its item
        self.confirmed: list[Any] = []
        channel.events["basic_ack"].add(self._confirmed)
        channel.events["basic_nack"].add(self._refused)
        channel.confirm_select()

    def add(self, item: Any) -> None:
        """Counts one message just published, for ``item``."""
        self.published += 1
        self.waiting[self.published] = item

    def wait(self, timeout: float) -> list[Any]:
        """The items RabbitMQ confirmed since the last wait, in their order,
        once it has answered for all, or ``timeout`` s have passed (then
        ``waiting`` still holds the rest). A refused one is left out."""
        deadline = time.monotonic() + timeout
        while self.waiting and (left := deadline - time.monotonic()) > 0:
            try:
                self.channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=left)
            except TimeoutError:
                break
        confirmed, self.confirmed = self.confirmed, []
        return confirmed

    def _confirmed(self, number: int, multiple: bool) -> None:
        self.confirmed.extend(self._answered(number, multiple))

    def _refused(self, number: int, multiple: bool) -> None:
        self._answered(number, multiple)

    def _answered(self, number: int, multiple: bool) -> list[Any]:
        if not multiple:
            return [self.waiting.pop(number)] if number in self.waiting else []
        # Numbered in the order published, so ``waiting`` is in that order.
        answered = list(itertools.takewhile(lambda n: n <= number, self.waiting))
        return [self.waiting.pop(n) for n in answered]


class Link:
    """One connection of ours: its producer and its channel's confirms."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.producer = cast(Any, Producer(connection))  # its stubs lack channel
        self.confirms = Confirms(self.producer.channel)


class ConfirmedProducers:
    """Links to RabbitMQ, kept for reuse (up to Celery's broker_pool_limit
    idle), one per thread using it at a time."""

    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """Without links. A forked process (Celery's prefork pool) calls it
        first: its parent's connections are its parent's (dropped here
        unclosed, as Celery drops its own pool in a forked process)."""
        self._lock = threading.Lock()
        self._idle: list[Link] = []

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Link | None]:
        """A link, kept for the next user if the block did not raise; None
        on the embedded broker, for Celery's own producers."""
        if is_embedded(settings.CELERY_BROKER_URL):
            yield None
            return
        with self._lock:
            link = self._idle.pop() if self._idle else None
        if link is None:
            link = self._connect()
        try:
            yield link
        except BaseException:
            link.connection.collect()  # dropped: its state unknown, closing it may wait for good
            raise
        with self._lock:
            if len(self._idle) < (app.conf.broker_pool_limit or 1):
                self._idle.append(link)
                return
        link.connection.collect()

    def _connect(self) -> Link:
        options = {
            **(app.conf.broker_transport_options or {}),
            "read_timeout": settings.BROKER_PUBLISH_TIMEOUT,
            "write_timeout": settings.BROKER_PUBLISH_TIMEOUT,
        }
        connection: Any = app.connection_for_write(transport_options=options)
        try:
            return Link(connection)
        except BaseException:
            connection.collect()
            raise


producers = ConfirmedProducers()
os.register_at_fork(after_in_child=producers.start_afresh)
