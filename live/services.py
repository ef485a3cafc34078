"""The one place events are emitted from.

``record_event`` stores a lifecycle event in the caller's transaction and
pushes it to the user's group only after that transaction commits, so no
socket ever hears of a state the database does not hold.
``change_with_event`` does the same for a change and its event made in one
statement (a worker ending its task, on PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any, NamedTuple, TypedDict

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db import connection, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework.authtoken.models import Token

from tasklight import retention

from .events import EventFrame, EventKind, ProgressFrame, user_group
from .models import Event, EventStream
from .publisher import publisher


def _bump_stream_sql(source: str = "VALUES (%s, 1)") -> str:
    # Creates or bumps the user's counter and holds its row lock until commit
    # (PostgreSQL; SQLite serialises all writers anyway). The table name is
    # ours; the only value is a parameter.
    table = connection.ops.quote_name(EventStream._meta.db_table)
    return (
        f"INSERT INTO {table} (user_id, last_event_id) {source} "
        f"ON CONFLICT (user_id) DO UPDATE SET last_event_id = {table}.last_event_id + 1 "
        "RETURNING last_event_id"
    )


def _next_event_id(user_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_bump_stream_sql(), [user_id])
        row = cursor.fetchone()
    return int(row[0])


def _insert_event(
    user_id: int, kind: str, task: dict[str, Any], change: tuple[str, list[Any]] | None = None
) -> Event | None:
    """Bumps the counter and inserts the event in one statement, one round
    trip (PostgreSQL: SQLite has no INSERT in a WITH). Every lifecycle event
    passes here: three per task (docs/benchmarks.md).

    ``change``, PostgreSQL only: a data-modifying statement with ``RETURNING``
    and its parameters, run first in the same statement; the event is stored
    only if it returned a row (None otherwise)."""
    if connection.vendor != "postgresql":
        if change is not None:
            raise NotImplementedError("a change in the event's statement needs PostgreSQL")
        return Event.objects.create(user_id=user_id, sequence=_next_event_id(user_id), kind=kind, task=task)
    created_at = timezone.now()
    table = connection.ops.quote_name(Event._meta.db_table)
    if change is None:
        ctes, params = f"bumped AS ({_bump_stream_sql()})", [user_id]
    else:
        # At most one row from the change: the counter is bumped once.
        # The change's SQL is the caller's (workloads/services.py), never a client's.
        ctes = f"changed AS ({change[0]}), bumped AS ({_bump_stream_sql('SELECT %s, 1 FROM changed')})"  # noqa: S608
        params = [*change[1], user_id]
    insert = (
        f"WITH {ctes} "  # noqa: S608  # our table names; values are parameters
        f"INSERT INTO {table} (user_id, sequence, kind, task, created_at) "
        "SELECT %s, last_event_id, %s, %s, %s FROM bumped RETURNING id, sequence"
    )
    task_value = Event._meta.get_field("task").get_db_prep_save(task, connection)
    with connection.cursor() as cursor:
        cursor.execute(insert, [*params, user_id, kind, task_value, created_at])
        row = cursor.fetchone()
    if row is None:
        return None
    event = Event(id=row[0], user_id=user_id, sequence=row[1], kind=kind, task=task, created_at=created_at)
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
    assert event is not None
    _publish_on_commit(user_id, event)
    return event


def one_statement_possible() -> bool:
    """Whether ``change_with_event`` can make a write and its event one
    statement that is its own transaction: on PostgreSQL, outside a
    transaction (inside one, the caller's statements and ``record_event``)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def change_with_event(
    change_sql: str, change_params: list[Any], *, user_id: int, kind: EventKind, task: dict[str, Any]
) -> Event | None:
    """Makes a change and stores its event in one statement (PostgreSQL only):
    ``change_sql`` modifies rows and ends with ``RETURNING``; if it returned
    a row (at most one), the event is stored and published after commit, and
    returned. Outside a transaction the statement is its own: one round trip
    instead of four (``BEGIN``, the change, the event, ``COMMIT``)."""
    event = _insert_event(user_id, kind, task, change=(change_sql, change_params))
    if event is not None:
        _publish_on_commit(user_id, event)
    return event


def _publish_on_commit(user_id: int, event: Event) -> None:
    frame = frame_for(event)
    # Outside a transaction (change_with_event's own), at once: it committed.
    transaction.on_commit(lambda: _publish_committed(user_id, frame))


def _publish_committed(user_id: int, frame: EventFrame) -> None:
    # The commit's wall-clock time rides along: the consumer that sends the
    # frame measures the notification lag from it (tasklight/metrics.py).
    publisher.push(user_group(user_id), {"type": "live.event", "frame": frame, "committed_at": time.time()})


def push_progress(*, user_id: int, task: dict[str, Any]) -> None:
    """Progress is not stored: a lost frame is replaced by the next one."""
    frame: ProgressFrame = {"type": "progress", "task": task}
    publisher.push(user_group(user_id), {"type": "live.progress", "frame": frame})


def stream_position(user_id: int) -> tuple[int, int]:
    """The user's newest event id and the id up to which notifications are
    read, from one read of their row."""
    row = EventStream.objects.filter(user_id=user_id).values_list("last_event_id", "read_up_to").first()
    return row or (0, 0)


def last_event_id(user_id: int) -> int:
    return stream_position(user_id)[0]


class CursorExpired(Exception):
    """Events after the client's cursor were deleted by retention: it must
    reload its state over REST instead of replaying (``resync``)."""

    def __init__(self, newest: int) -> None:
        super().__init__(f"events before {newest} are no longer kept")
        self.newest = newest


class CursorAhead(Exception):
    """The client's cursor is beyond the user's newest event. An id reaches a
    client only once its event has committed, so this database never gave it
    out: the client's state comes from other data (a database reset or
    restored from a backup, a cursor kept for another account). Answered as a
    bad cursor by both doors (docs/events.md), never as "nothing new": the
    events up to the cursor, once they exist, would be skipped unseen."""

    def __init__(self, *, after: int, newest: int) -> None:
        super().__init__(f"No event {after} yet; the newest is {newest}.")
        self.newest = newest


def check_cursor(*, after: int, newest: int) -> None:
    """Raises CursorAhead if ``after`` is beyond ``newest``; ``after == newest``
    is a client that is up to date."""
    if after > newest:
        raise CursorAhead(after=after, newest=newest)


def events_after(*, user_id: int, after: int, limit: int) -> list[Event]:
    """The user's stored events with ids above ``after``, oldest first.

    Raises CursorExpired when some of them are gone: ids have no gaps, so the
    first one returned must be ``after + 1``. Raises CursorAhead when
    ``after`` is beyond the newest event.
    """
    query = Event.objects.filter(user_id=user_id, sequence__gt=after).order_by("sequence")[:limit]
    events = list(query)
    if events and events[0].sequence != after + 1:
        raise CursorExpired(last_event_id(user_id))
    if not events:
        newest = last_event_id(user_id)
        # Read after the query, and ids only grow: beyond it, beyond them all.
        check_cursor(after=after, newest=newest)
        if after < newest:
            # Either they are gone, or one committed between the query and the
            # read of the newest id. Every id up to that one has committed now
            # (ids commit in order), so a second look tells which.
            events = list(query.all())
            if not events or events[0].sequence != after + 1:
                raise CursorExpired(newest)
    return events


def delete_expired_events(*, batch: int = retention.BATCH) -> int:
    """Deletes events older than EVENT_RETENTION_DAYS, in batches; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    return retention.delete_in_batches(Event.objects.filter(created_at__lt=cutoff), batch=batch)


# --- The inbox: terminal events are notifications -------------------------

NOTIFICATION_KINDS = ("task.succeeded", "task.failed", "task.cancelled")
# Counting stops here: a badge says "999+", and the query stays cheap.
UNREAD_COUNT_CAP = 1000


class InboxState(TypedDict):
    unread: int
    read_up_to: int
    # The newest event id the count covers: notifications after it, committed
    # meanwhile, reach the client as events and are counted there.
    last_event_id: int


def inbox_state(user_id: int, position: tuple[int, int] | None = None) -> InboxState:
    """The unread count as of one point of the user's stream: the
    notifications after ``read_up_to`` and up to ``last_event_id``, both as
    one read of the row has them (``position``, or read here). Ids are
    given out in commit order, so the count is exact for that point, and a
    client adds the notifications it hears of after it, none twice."""
    newest, read_up_to = stream_position(user_id) if position is None else position
    unread = Event.objects.filter(
        user_id=user_id, sequence__gt=read_up_to, sequence__lte=newest, kind__in=NOTIFICATION_KINDS
    )[:UNREAD_COUNT_CAP].count()
    return {"unread": unread, "read_up_to": read_up_to, "last_event_id": newest}


class HelloState(NamedTuple):
    """What a new socket is told, and when its session ends."""

    # The newest event id is the inbox's last_event_id: one read of the row.
    inbox: InboxState
    # The session's expiry (None: gone); only looked up for a session's socket.
    session_expires_at: datetime | None


def hello_state(user_id: int, session_key: str | None = None) -> HelloState:
    """What a new socket is told (the newest event id and the inbox) and, for
    a session's socket, when its session ends: one trip to the database
    thread for both."""
    expires_at = session_expires_at(session_key) if session_key is not None else None
    return HelloState(inbox_state(user_id), expires_at)


def session_expires_at(session_key: str) -> datetime | None:
    """When the stored session ends; None if it is gone (logged out, or
    deleted by ``clearsessions``). Sessions are Django's database ones."""
    return Session.objects.filter(session_key=session_key).values_list("expire_date", flat=True).first()


# Keys per query of a batch of credential checks: a bounded IN list.
CREDENTIAL_CHUNK = 1000


class HoldingCredentials(NamedTuple):
    """Of the credentials asked about, those that still sign their user in."""

    # (user id, token key)
    tokens: set[tuple[int, str]]
    # (user id, session key) -> the session's expiry (past ones included)
    sessions: dict[tuple[int, str], datetime]


def credentials_that_hold(
    *, tokens: Collection[tuple[int, str]] = (), sessions: Collection[tuple[int, str]] = ()
) -> HoldingCredentials:
    """Which of these credentials still sign their user in, as a request
    would be authenticated with them: a token whose row is there with that
    key (revoked or rotated: gone) and whose user is active, as the REST API
    decides (from the database: the cache is dropped when a token is
    deleted, but a drop can be lost as a message can); a session as Django's
    ``get_user`` decides: there, of that user, who is active, and holding
    the hash of the user's password as it is now (or under a fallback
    secret). The open sockets' checks of a moment, for any number of them:
    a query for the tokens, one for the sessions and one for their users,
    on primary keys (CREDENTIAL_CHUNK keys to a query)."""
    holding = HoldingCredentials(set(), {})
    token_list, session_list = list(tokens), list(sessions)
    for start in range(0, len(token_list), CREDENTIAL_CHUNK):
        chunk = token_list[start : start + CREDENTIAL_CHUNK]
        rows = Token.objects.filter(key__in={key for _, key in chunk}, user__is_active=True)
        found = {(user_id, key) for key, user_id in rows.values_list("key", "user_id")}
        holding.tokens.update(pair for pair in chunk if pair in found)
    user_model = get_user_model()
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    for start in range(0, len(session_list), CREDENTIAL_CHUNK):
        chunk = session_list[start : start + CREDENTIAL_CHUNK]
        session_rows = Session.objects.filter(session_key__in={key for _, key in chunk})
        stored = {
            key: (expiry, data)
            for key, expiry, data in session_rows.values_list("session_key", "expire_date", "session_data")
        }
        users = user_model._default_manager.filter(pk__in={user_id for user_id, _ in chunk}, is_active=True)
        passwords = dict(users.values_list("pk", "password"))
        for user_id, key in chunk:
            if key in stored and user_id in passwords:
                expiry, data = stored[key]
                if _signs_in(store.decode(data), user_model(pk=user_id, password=passwords[user_id])):
                    holding.sessions[(user_id, key)] = expiry
    return holding


def _signs_in(session: dict[str, Any], user: Any) -> bool:
    """Django's ``get_user`` on a decoded session, for a user who is active."""
    if str(session.get(SESSION_KEY)) != str(user.pk):
        return False
    if session.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
        return False
    session_hash = session.get(HASH_SESSION_KEY)
    return isinstance(session_hash, str) and any(
        constant_time_compare(session_hash, known)
        for known in (user.get_session_auth_hash(), *user.get_session_auth_fallback_hash())
    )


def notifications(*, user_id: int, limit: int) -> list[Event]:
    """The newest notifications first."""
    return list(Event.objects.filter(user_id=user_id, kind__in=NOTIFICATION_KINDS).order_by("-sequence")[:limit])


def mark_read(*, user_id: int, up_to: int) -> InboxState:
    """Marks the user's notifications up to ``up_to`` read and tells every
    socket of the user, so that all tabs agree."""
    with transaction.atomic():
        stream = EventStream.objects.select_for_update().filter(user_id=user_id).first()
        if stream is None:
            return {"unread": 0, "read_up_to": 0, "last_event_id": 0}
        up_to = min(up_to, stream.last_event_id)
        if up_to <= stream.read_up_to:
            return inbox_state(user_id, (stream.last_event_id, stream.read_up_to))
        stream.read_up_to = up_to
        stream.save(update_fields=["read_up_to"])
        state = inbox_state(user_id, (stream.last_event_id, up_to))
        frame = {"type": "inbox", **state}
        transaction.on_commit(lambda: publisher.push(user_group(user_id), {"type": "live.inbox", "frame": frame}))
    return state
