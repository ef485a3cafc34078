"""The one place events are emitted from.

``record_event`` stores a lifecycle event in the caller's transaction and
pushes it to the user's group only after that transaction commits, so no
socket ever hears of a state the database does not hold.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .events import EventFrame, EventKind, ProgressFrame, user_group
from .models import Event, EventStream
from .publisher import publisher


def _bump_stream_sql() -> str:
    # Creates or bumps the user's counter and holds its row lock until commit
    # (PostgreSQL; SQLite serialises all writers anyway). The table name is
    # ours; the only value is a parameter.
    table = connection.ops.quote_name(EventStream._meta.db_table)
    return (
        f"INSERT INTO {table} (user_id, last_event_id) VALUES (%s, 1) "  # noqa: S608
        f"ON CONFLICT (user_id) DO UPDATE SET last_event_id = {table}.last_event_id + 1 "
        "RETURNING last_event_id"
    )


def _next_event_id(user_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_bump_stream_sql(), [user_id])
        row = cursor.fetchone()
    return int(row[0])


def _insert_event(user_id: int, kind: str, task: dict[str, Any]) -> Event:
    """Bumps the counter and inserts the event in one statement, one round
    trip (PostgreSQL: SQLite has no INSERT in a WITH). Every lifecycle event
    passes here: three per task (docs/benchmarks.md)."""
    if connection.vendor != "postgresql":
        return Event.objects.create(user_id=user_id, sequence=_next_event_id(user_id), kind=kind, task=task)
    created_at = timezone.now()
    table = connection.ops.quote_name(Event._meta.db_table)
    insert = (
        f"WITH bumped AS ({_bump_stream_sql()}) "  # noqa: S608  # our table names; values are parameters
        f"INSERT INTO {table} (user_id, sequence, kind, task, created_at) "
        "SELECT %s, last_event_id, %s, %s, %s FROM bumped RETURNING id, sequence"
    )
    task_value = Event._meta.get_field("task").get_db_prep_save(task, connection)
    with connection.cursor() as cursor:
        cursor.execute(insert, [user_id, user_id, kind, task_value, created_at])
        event_id, sequence = cursor.fetchone()
    event = Event(id=event_id, user_id=user_id, sequence=sequence, kind=kind, task=task, created_at=created_at)
    event._state.adding = False
    event._state.db = connection.alias
    return event


def frame_for(event: Event) -> EventFrame:
    return {"type": "event", "id": event.sequence, "event": event.kind, "task": event.task}  # type: ignore[typeddict-item]


def record_event(*, user_id: int, kind: EventKind, task: dict[str, Any]) -> Event:
    """Stores an event; must run inside the transaction of the change it reports."""
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside the transaction it reports on")
    event = _insert_event(user_id, kind, task)
    frame = frame_for(event)
    transaction.on_commit(lambda: _publish_committed(user_id, frame))
    return event


def _publish_committed(user_id: int, frame: EventFrame) -> None:
    # The commit's wall-clock time rides along: the consumer that sends the
    # frame measures the notification lag from it (tasklight/metrics.py).
    publisher.push(user_group(user_id), {"type": "live.event", "frame": frame, "committed_at": time.time()})


def push_progress(*, user_id: int, task: dict[str, Any]) -> None:
    """Progress is not stored: a lost frame is replaced by the next one."""
    frame: ProgressFrame = {"type": "progress", "task": task}
    publisher.push(user_group(user_id), {"type": "live.progress", "frame": frame})


def last_event_id(user_id: int) -> int:
    value = EventStream.objects.filter(user_id=user_id).values_list("last_event_id", flat=True).first()
    return value or 0


class CursorExpired(Exception):
    """Events after the client's cursor were deleted by retention: it must
    reload its state over REST instead of replaying (``resync``)."""

    def __init__(self, newest: int) -> None:
        super().__init__(f"events before {newest} are no longer kept")
        self.newest = newest


def events_after(*, user_id: int, after: int, limit: int) -> list[Event]:
    """The user's stored events with ids above ``after``, oldest first.

    Raises CursorExpired when some of them are gone: ids have no gaps, so the
    first one returned must be ``after + 1``.
    """
    events = list(Event.objects.filter(user_id=user_id, sequence__gt=after).order_by("sequence")[:limit])
    if events and events[0].sequence != after + 1:
        raise CursorExpired(last_event_id(user_id))
    if not events and after < (newest := last_event_id(user_id)):
        raise CursorExpired(newest)
    return events


def delete_expired_events(*, batch: int = 10_000) -> int:
    """Deletes events older than EVENT_RETENTION_DAYS, in batches; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(Event.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += Event.objects.filter(id__in=ids).delete()[0]


# --- The inbox: terminal events are notifications -------------------------

NOTIFICATION_KINDS = ("task.succeeded", "task.failed", "task.cancelled")
# Counting stops here: a badge says "999+", and the query stays cheap.
UNREAD_COUNT_CAP = 1000


class InboxState(TypedDict):
    unread: int
    read_up_to: int


def inbox_state(user_id: int, read_up_to: int | None = None) -> InboxState:
    if read_up_to is None:
        read_up_to = EventStream.objects.filter(user_id=user_id).values_list("read_up_to", flat=True).first() or 0
    unread = Event.objects.filter(user_id=user_id, sequence__gt=read_up_to, kind__in=NOTIFICATION_KINDS)[
        :UNREAD_COUNT_CAP
    ].count()
    return {"unread": unread, "read_up_to": read_up_to}


def hello_state(user_id: int) -> tuple[int, InboxState]:
    """What a new socket is told: the newest event id and the inbox."""
    row = EventStream.objects.filter(user_id=user_id).values_list("last_event_id", "read_up_to").first()
    newest, read_up_to = row or (0, 0)
    return newest, inbox_state(user_id, read_up_to)


def notifications(*, user_id: int, limit: int) -> list[Event]:
    """The newest notifications first."""
    return list(Event.objects.filter(user_id=user_id, kind__in=NOTIFICATION_KINDS).order_by("-sequence")[:limit])


def mark_read(*, user_id: int, up_to: int) -> InboxState:
    """Marks the user's notifications up to ``up_to`` read and tells every
    socket of the user, so that all tabs agree."""
    with transaction.atomic():
        stream = EventStream.objects.select_for_update().filter(user_id=user_id).first()
        if stream is None:
            return {"unread": 0, "read_up_to": 0}
        up_to = min(up_to, stream.last_event_id)
        if up_to <= stream.read_up_to:
            return inbox_state(user_id, stream.read_up_to)
        stream.read_up_to = up_to
        stream.save(update_fields=["read_up_to"])
        state = inbox_state(user_id, up_to)
        frame = {"type": "inbox", **state}
        transaction.on_commit(lambda: publisher.push(user_group(user_id), {"type": "live.inbox", "frame": frame}))
    return state
