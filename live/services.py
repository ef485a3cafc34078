"""The one place events are emitted from.

``record_event`` stores a lifecycle event in the caller's transaction and
pushes it to the user's group only after that transaction commits, so no
socket ever hears of a state the database does not hold.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from .events import EventFrame, EventKind, ProgressFrame, user_group
from .models import Event, EventStream
from .publisher import publisher


def _next_event_id(user_id: int) -> int:
    # One statement that creates or bumps the user's counter and holds its row
    # lock until commit (PostgreSQL; SQLite serialises all writers anyway).
    # The table name is ours; the only value is a parameter.
    table = connection.ops.quote_name(EventStream._meta.db_table)
    upsert = (
        f"INSERT INTO {table} (user_id, last_event_id) VALUES (%s, 1) "  # noqa: S608
        f"ON CONFLICT (user_id) DO UPDATE SET last_event_id = {table}.last_event_id + 1 "
        "RETURNING last_event_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(upsert, [user_id])
        row = cursor.fetchone()
    return int(row[0])


def frame_for(event: Event) -> EventFrame:
    return {"type": "event", "id": event.sequence, "event": event.kind, "task": event.task}  # type: ignore[typeddict-item]


def record_event(*, user_id: int, kind: EventKind, task: dict[str, Any]) -> Event:
    """Stores an event; must run inside the transaction of the change it reports."""
    if not connection.in_atomic_block:
        raise RuntimeError("record_event must run inside the transaction it reports on")
    event = Event.objects.create(user_id=user_id, sequence=_next_event_id(user_id), kind=kind, task=task)
    frame = frame_for(event)
    transaction.on_commit(lambda: publisher.push(user_group(user_id), {"type": "live.event", "frame": frame}))
    return event


def push_progress(*, user_id: int, task: dict[str, Any]) -> None:
    """Progress is not stored: a lost frame is replaced by the next one."""
    frame: ProgressFrame = {"type": "progress", "task": task}
    publisher.push(user_group(user_id), {"type": "live.progress", "frame": frame})


def last_event_id(user_id: int) -> int:
    value = EventStream.objects.filter(user_id=user_id).values_list("last_event_id", flat=True).first()
    return value or 0


def events_after(*, user_id: int, after: int, limit: int) -> list[Event]:
    return list(Event.objects.filter(user_id=user_id, sequence__gt=after).order_by("sequence")[:limit])
