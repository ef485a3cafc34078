"""The embedded broker (``make run``): kombu's SQL transport, on SQLite.

That transport marks a message it hands to a worker invisible and never
deletes it, and never delivers it again: not when its worker dies holding it,
nor when the worker is stopped before it gives it back. The workers fill both
gaps from here: their hourly cleanup deletes delivered messages, and a worker
starting sends again the queued and running tasks whose message is no longer
waiting (workloads/tasks.py, docs/lifecycle.md). On any other broker there is nothing to do.

Its table is read with an engine of our own, disposed of after each use:
one worker start reads it before the pool processes are forked, which must
not inherit an open connection, and kombu's engine is cached for the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy
from sqlalchemy.engine import Connection

from .celery import app

# kombu's default; Tasklight does not change it (broker_transport_options).
MESSAGES = "kombu_message"


def is_embedded(broker_url: str) -> bool:
    return broker_url.startswith("sqla+")


@contextmanager
def _broker_database(broker_url: str) -> Iterator[Connection | None]:
    """A transaction on the broker's database; None before kombu made its
    table (no message was ever sent through it)."""
    engine = sqlalchemy.create_engine(broker_url.removeprefix("sqla+"))
    try:
        with engine.begin() as conn:
            yield conn if sqlalchemy.inspect(conn).has_table(MESSAGES) else None
    finally:
        engine.dispose()


def delete_delivered_messages(broker_url: str | None = None) -> int:
    """Deletes the messages the broker has delivered; returns how many. The
    row is not needed again: a worker acks or rejects the message it holds
    in memory, and a message put back is written as a new row."""
    url = broker_url or app.conf.broker_url
    if not is_embedded(url):
        return 0
    with _broker_database(url) as conn:
        if conn is None:
            return 0
        return conn.execute(sqlalchemy.text(f"DELETE FROM {MESSAGES} WHERE NOT visible")).rowcount  # noqa: S608


def waiting_task_ids(broker_url: str | None = None) -> set[str]:
    """The ids of the tasks whose messages wait in the broker, undelivered."""
    url = broker_url or app.conf.broker_url
    if not is_embedded(url):
        raise ValueError(f"not the embedded broker: {url.split('://', 1)[0]}://")
    with _broker_database(url) as conn:
        if conn is None:
            return set()
        payloads = conn.execute(sqlalchemy.text(f"SELECT payload FROM {MESSAGES} WHERE visible")).scalars()  # noqa: S608
        return {json.loads(payload)["headers"]["id"] for payload in payloads}
