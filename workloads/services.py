"""Every change of a task's state happens here, and nowhere else.

The API, the pages and the worker call these functions; each one runs in a
transaction, saves only the fields it changes and records the lifecycle event
in that same transaction (live.services.record_event).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Field, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from live.events import EventKind
from live.models import EventStream
from live.services import change_with_event, one_statement_possible, push_progress, record_event
from tasklight import metrics, retention

from . import confirmed, outbox, sent_marks
from .models import IdempotencyKey, Task, TaskStatus
from .registry import (
    UNSTORABLE_TEXT,
    InvalidParams,
    UnknownWorkload,
    get_workload,
    nested_deeper_than,
    storable,
    unfit_values,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)


class TaskConflict(Exception):
    """The task's state forbids the action (the API's 409)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key reused with a different request (the API's 422)."""


class OwnerGone(IntegrityError):
    """The owner's account is not in the database (deleted while the task
    was being made: the API's 401); the insert failed on the missing owner."""


class NotStartedYet(Exception):
    """A task that cannot start now, to be sent again (``kind``: its
    workload's, for the message's time limits)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class OwnerAtCapacity(NotStartedYet):
    """The owner already has MAX_RUNNING_TASKS_PER_USER tasks running."""


class StillRunningElsewhere(NotStartedYet):
    """A redelivered task whose lease is fresh: its worker is alive."""


class NotRunnableHere(Exception):
    """This worker cannot run the task: its workload is not installed here,
    or this worker's version of it refuses the parameters that a web process
    (of another release, or with other WORKLOAD_MODULES) accepted. Raised by
    start_task before it changes anything."""

    def __init__(self, kind: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.reason = reason  # workload_missing or params_refused: the metric's label
        self.detail = detail


# --- Creating ---------------------------------------------------------------


def create_task(
    *, owner: User, kind: str, params: Any, idempotency_key: str | None = None, retry_of: Task | None = None
) -> Task:
    """Validates and stores a task, then sends it to the broker after commit.

    With an ``idempotency_key``, a repeat of the same request by the same
    owner within 24 h returns the task the first one created; the same key
    with other parameters raises IdempotencyMismatch. Raises UnknownWorkload
    or InvalidParams, and OwnerGone; nothing is stored then.
    """
    normalised = get_workload(kind).normalise(params)
    try:
        return _create_task(owner, kind, normalised, idempotency_key, retry_of)
    except IntegrityError:
        if not _exists(owner):
            raise OwnerGone from None
        raise


def _exists(owner: User) -> bool:
    return type(owner).objects.filter(pk=owner.pk).exists()


def _create_task(
    owner: User, kind: str, normalised: dict[str, Any], idempotency_key: str | None, retry_of: Task | None
) -> Task:
    if idempotency_key is None:
        if one_statement_possible():
            return _create_in_one_statement(owner, kind, normalised, retry_of)
        with transaction.atomic():
            return _create(owner, kind, normalised, retry_of)
    fingerprint = hashlib.sha256(
        json.dumps({"kind": kind, "params": normalised}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    # A concurrent request with the same key makes our insert of the key fail;
    # the whole attempt (task, event, send) rolls back and we read its task.
    for _ in range(3):
        try:
            with transaction.atomic():
                existing = (
                    IdempotencyKey.objects.select_for_update()
                    .select_related("task")
                    .filter(owner=owner, key=idempotency_key)
                    .first()
                )
                if existing is not None:
                    if existing.created_at >= timezone.now() - IDEMPOTENCY_WINDOW:
                        if existing.fingerprint != fingerprint:
                            raise IdempotencyMismatch
                        return existing.task
                    existing.delete()
                task = _create(owner, kind, normalised, retry_of)
                IdempotencyKey.objects.create(owner=owner, key=idempotency_key, fingerprint=fingerprint, task=task)
                return task
        except IntegrityError:
            if not _exists(owner):
                raise OwnerGone from None  # not a concurrent key: the owner was deleted meanwhile
            continue
    raise RuntimeError(f"could not settle Idempotency-Key {idempotency_key!r}")


def _create(owner: User, kind: str, params: dict[str, Any], retry_of: Task | None) -> Task:
    task = Task.objects.create(owner=owner, kind=kind, params=params, retry_of=retry_of)
    record_event(user_id=owner.pk, kind="task.queued", task=task.as_json())
    # Sent only once the row is committed: a worker never looks for a task
    # that is not there yet, and a rolled-back task is never sent.
    task_id = task.id
    transaction.on_commit(lambda: _queued(task_id, kind))
    return task


def _create_in_one_statement(owner: User, kind: str, params: dict[str, Any], retry_of: Task | None) -> Task:
    """``_create`` on PostgreSQL outside a transaction: the task's INSERT and
    its ``task.queued`` event in one statement that is its own transaction,
    one round trip instead of four and no ORM insert (~a third of a POST's
    view, docs/benchmarks.md). Then, as after a commit, the event is
    published and the task sent to the broker, in that order."""
    task = Task(owner=owner, kind=kind, params=params, retry_of=retry_of)
    fields = Task._meta.concrete_fields
    # pre_save fills created_at (auto_now_add) on the instance too.
    values = [field.get_db_prep_save(field.pre_save(task, True), connection) for field in fields]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(cast(str, field.column)) for field in fields)
    insert = (
        f"INSERT INTO {quote(Task._meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING 1"
    )
    change_with_event(insert, values, user_id=owner.pk, kind="task.queued", task=task.as_json())
    task._state.adding = False
    task._state.db = connection.alias
    _queued(task.id, kind)
    return task


def _queued(task_id: uuid.UUID, kind: str) -> None:
    metrics.task_created(kind)
    # With the request's id: the first line of the task's trail (docs/observability.md).
    logger.info("task queued", extra={"task_id": str(task_id), "kind": kind})
    # Sent after the answer, confirmed, by this process's outbox thread.
    outbox.outbox.send(task_id, kind)


def send_to_broker(
    *,
    task_id: uuid.UUID | str,
    kind: str,
    countdown: float | None = None,
    again: bool | str = False,
    mark_now: bool = False,
    headers: dict[str, Any] | None = None,
) -> bool:
    """Sends one task (send_many); False when the broker did not take it
    (the relay sends it later)."""
    return bool(send_many([(task_id, kind)], countdown=countdown, again=again, mark_now=mark_now, headers=headers))


def send_many(
    tasks: Sequence[tuple[uuid.UUID | str, str]],
    *,
    countdown: float | None = None,
    again: bool | str = False,
    mark_now: bool = False,
    headers: dict[str, Any] | None = None,
) -> list[uuid.UUID | str]:
    """Publishes these (id, kind) pairs, in order, and returns the ids
    RabbitMQ confirmed (workloads/confirmed.py; on the embedded broker, all
    it took); the others are left to the relay. Never raises: the broker
    being down is no reason to refuse work (DESIGN.md §4). ``sent_at`` is
    written in a batch shortly after (sent_marks.py), or at once with
    ``mark_now``. ``headers`` go into each message (workloads/tasks.py's
    hand-back count; a worker of an older release ignores them)."""
    sent: list[uuid.UUID | str] = []
    failure: Exception | None = None
    silenced = False
    # A second try, on a new connection, after a failure that came at once:
    # a kept connection that RabbitMQ closed meanwhile (a restart) fails so.
    for _ in range(2):
        done = set(sent)
        unsent = [task for task in tasks if task[0] not in done]
        if not unsent:
            break
        if broker_silence.holds():
            silenced = True
            break
        started = time.monotonic()
        try:
            with confirmed.producers.acquire() as link:
                _publish(unsent, link, sent, countdown=countdown, again=again, headers=headers)
        except Exception as exc:
            failure = exc
            waited = time.monotonic() - started
            broker_silence.failed(exc, waited=waited)
            if waited >= settings.BROKER_PUBLISH_TIMEOUT:
                break
            logger.info("a send to the broker failed at once (%s): tried again on a new connection", exc)
            continue
        break
    done = set(sent)
    left = [str(task_id) for task_id, _ in tasks if task_id not in done]
    if left:
        shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
        named = f"task {left[0]}" if len(left) == 1 else f"{len(left)} tasks ({shown})"
        if failure is not None:
            logger.warning("%s not sent to the broker (the relay will retry): %s", named, failure)
        elif silenced:
            logger.debug("%s not sent: the broker did not answer a moment ago (the relay will send it)", named)
        else:
            logger.warning("%s refused by the broker (the relay will retry)", named)
    if sent:
        if mark_now:
            sent_marks.write(sent)
        else:
            sent_marks.sent_marks.add_all(sent)
    return sent


def _publish(
    tasks: Sequence[tuple[uuid.UUID | str, str]],
    link: confirmed.Link | None,
    sent: list[uuid.UUID | str],
    *,
    countdown: float | None,
    again: bool | str,
    headers: dict[str, Any] | None,
) -> None:
    """Publishes these on ``link`` and adds to ``sent`` those RabbitMQ
    confirmed; raises if it did not answer for all in time. With no link
    (the embedded broker), Celery's producers, and each counts once taken."""
    from .tasks import run_task

    for task_id, kind in tasks:
        args, kwargs = (str(task_id),), {"again": again}
        options = _message_options(kind, countdown=countdown, headers=headers, args=args, kwargs=kwargs)
        if link is None:
            run_task.apply_async(args=args, kwargs=kwargs, task_id=str(task_id), **options)
            sent.append(task_id)
            continue
        # Not retried by Celery: a retry on a new channel would number its messages anew.
        options["timeout"] = settings.BROKER_PUBLISH_TIMEOUT  # bounds the write
        run_task.apply_async(
            args=args,
            kwargs=kwargs,
            task_id=str(task_id),
            producer=link.producer,
            retry=False,
            **options,
        )
        link.confirms.add(task_id)
    if link is not None:
        sent.extend(link.confirms.wait(settings.BROKER_PUBLISH_TIMEOUT))
        if link.confirms.waiting:
            raise TimeoutError(
                f"RabbitMQ confirmed {len(tasks) - len(link.confirms.waiting)} of {len(tasks)} "
                f"message(s) within {settings.BROKER_PUBLISH_TIMEOUT:g} s"
            )


def _message_options(
    kind: str, *, countdown: float | None, headers: dict[str, Any] | None, args: tuple, kwargs: dict
) -> dict[str, Any]:
    try:
        workload = get_workload(kind)
        soft_limit, hard_limit = workload.soft_time_limit, workload.time_limit
    except UnknownWorkload:
        soft_limit = hard_limit = None  # a worker that has it runs it; none: it fails, saying why (tasks._hand_back)
    options: dict[str, Any] = {
        "soft_time_limit": soft_limit or settings.TASK_SOFT_TIME_LIMIT,
        "time_limit": hard_limit or settings.TASK_TIME_LIMIT,
    }
    if countdown is not None:
        options["countdown"] = countdown
    if headers:
        options["headers"] = headers
    # Their repr given: Celery's saferepr of them (for logs and Flower)
    # is the same text at ~3 % of a POST's CPU (docs/benchmarks.md).
    options.update(argsrepr=repr(args), kwargsrepr=repr(kwargs))
    return options


class BrokerSilence:
    """After a publish that waited out BROKER_PUBLISH_TIMEOUT and failed (a
    broker that does not answer: RabbitMQ blocking publishers in a memory or
    disk alarm, or a host gone silent behind a network), this process sends
    nothing for SECONDS: its tasks are left to the relay, and a POST answers
    at once instead of waiting out the timeout and its retries (three times
    it) again. A broker that refuses at once (stopped) trips nothing."""

    SECONDS = 10.0

    def __init__(self) -> None:
        self.until = 0.0

    def holds(self) -> bool:
        return time.monotonic() < self.until

    def failed(self, cause: BaseException, *, waited: float) -> None:
        """A publish failed after ``waited`` seconds: a silence begins if it
        waited out the timeout."""
        if waited < settings.BROKER_PUBLISH_TIMEOUT:
            return
        if not self.holds():
            logger.warning(
                "the broker did not answer within %g s (%s): tasks are left to the relay for %g s",
                settings.BROKER_PUBLISH_TIMEOUT,
                cause,
                self.SECONDS,
            )
        self.until = time.monotonic() + self.SECONDS


# One per process; a forked pool process starts with its parent's (a value).
broker_silence = BrokerSilence()


def leave_to_relay(task_id: uuid.UUID | str) -> None:
    """A queued task whose message this worker took and could not send back
    (the broker refused or did not confirm it) is marked never sent, for the
    relay: otherwise, its message acknowledged and none left in the broker,
    it stayed queued for good. A task no longer queued is left as it is."""
    if Task.objects.filter(pk=task_id, status=TaskStatus.QUEUED).update(sent_at=None):
        logger.warning("task %s: left to the relay, which sends it once the broker takes it", task_id)


def relay_unsent(*, older_than: float, limit: int = 500) -> int:
    """Sends queued tasks the broker never accepted; returns how many it sent.

    Several workers may relay at once: rows are claimed with SKIP LOCKED where
    the database has it, and a task sent twice still runs once (start_task).
    """
    cutoff = timezone.now() - timedelta(seconds=older_than)
    with transaction.atomic():
        unsent = Task.objects.filter(status=TaskStatus.QUEUED, sent_at__isnull=True, created_at__lt=cutoff)
        # Marked in the relay's transaction, which holds these rows' locks.
        return len(_send_claimed(unsent.order_by("created_at"), limit=limit, mark_now=True))


def resend_abandoned(*, older_than: float, limit: int = 100) -> int:
    """Sends again the running tasks whose lease lapsed ``older_than`` s ago
    (their worker died), as redeliveries: start_task takes each over and it
    runs from the start. For a broker that does not deliver a dead worker's
    message again (RESEND_ABANDONED_TASKS). Each one's lease is set to have
    lapsed just now: taken over at once, not sent again by the next round."""
    now = timezone.now()
    with transaction.atomic():
        abandoned = Task.objects.filter(status=TaskStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=older_than))
        sent = _send_claimed(abandoned.order_by("heartbeat_at"), limit=limit, again=True)
        lapsed = now - timedelta(seconds=settings.TASK_LEASE_SECONDS)
        Task.objects.filter(pk__in=sent, status=TaskStatus.RUNNING).update(heartbeat_at=lapsed)
    return len(sent)


def sent_queued_tasks() -> list[tuple[uuid.UUID, str]]:
    """The queued tasks already sent to the broker, oldest first: (id, kind)."""
    sent = Task.objects.filter(status=TaskStatus.QUEUED, sent_at__isnull=False).order_by("created_at")
    return list(sent.values_list("id", "kind"))


def running_tasks() -> list[tuple[uuid.UUID, str]]:
    """The running tasks, by the age of their lease, oldest first: (id, kind)."""
    return list(Task.objects.filter(status=TaskStatus.RUNNING).order_by("heartbeat_at").values_list("id", "kind"))


def send_again(tasks: Iterable[tuple[uuid.UUID, str]], *, again: bool = False) -> int:
    """Sends these tasks to the broker again, in their order, 500 at a time;
    returns how many RabbitMQ confirmed (it stops at a batch not all
    confirmed). A task sent twice still runs once (start_task); with
    ``again``, as a redelivery, a running one is taken over once its lease
    has lapsed."""
    tasks, count = list(tasks), 0
    for first in range(0, len(tasks), 500):
        batch = tasks[first : first + 500]
        sent = send_many(batch, again=again, mark_now=True)
        count += len(sent)
        if len(sent) < len(batch):
            break
    return count


def _send_claimed(tasks: QuerySet[Task], *, limit: int, **send_options: Any) -> list[uuid.UUID]:
    """Sends up to ``limit`` of these tasks, in their order, their rows locked
    by the caller's transaction (skipping those another worker holds, where
    the database can). Returns the ids sent."""
    if connection.features.has_select_for_update_skip_locked:
        tasks = tasks.select_for_update(skip_locked=True)
    return cast(list[uuid.UUID], send_many(list(tasks.values_list("id", "kind")[:limit]), **send_options))


def idempotency_key_in_use(*, owner_id: int, key: str) -> bool:
    """Whether this owner's ``key`` names a task of the last 24 h."""
    cutoff = timezone.now() - IDEMPOTENCY_WINDOW
    return IdempotencyKey.objects.filter(owner_id=owner_id, key=key, created_at__gte=cutoff).exists()


def delete_expired_idempotency_keys(*, batch: int = retention.BATCH) -> int:
    """Deletes the keys older than IDEMPOTENCY_WINDOW, in batches; returns how many."""
    cutoff = timezone.now() - IDEMPOTENCY_WINDOW
    return retention.delete_in_batches(IdempotencyKey.objects.filter(created_at__lt=cutoff), batch=batch)


# --- Running ----------------------------------------------------------------


def start_task(*, task_id: uuid.UUID | str, redelivered: bool, resumed: bool = False) -> Task | None:
    """Marks a task running; None when it must not run.

    Not run: a task that is gone or finished, a cancelled one, and a second
    copy of a message for a task another worker is running. A task found
    running in a *redelivered* message lost its worker: it runs again from the
    start, without a second ``task.started``, counting a start; ``resumed``,
    its last run was cut short by the database going away, in a worker that
    lived: it runs again without counting one. Raises OwnerAtCapacity when the
    owner has MAX_RUNNING_TASKS_PER_USER tasks running already.
    """
    with transaction.atomic():
        # On PostgreSQL the owner's event-stream row is locked in the same
        # statement: one start at a time per owner, so that their count of
        # running tasks holds until commit. An owner with no stream row yet
        # (a task not made through this module) has nothing to lock.
        on_postgresql = connection.vendor == "postgresql"
        task = (_locked_task(task_id, lock_owner=True) if on_postgresql else None) or _locked_task(task_id)
        if task is None or task.is_finished:
            return None
        if task.status == TaskStatus.RUNNING and not redelivered:
            return None
        if task.status == TaskStatus.RUNNING:
            now = database_now()  # the clock the running worker renews the lease by
            lease_age = (now - task.heartbeat_at).total_seconds() if task.heartbeat_at else None
            if lease_age is not None and lease_age < settings.TASK_LEASE_SECONDS:
                raise StillRunningElsewhere(task.kind)
        if task.cancel_requested_at is not None:
            _close(task, TaskStatus.CANCELLED, error="Cancelled by its owner.")
            return None
        # Before anything is written: a task this worker cannot run is left
        # as it is, for another worker (workloads/tasks.py hands it back).
        _check_runnable_here(task)
        if task.status == TaskStatus.RUNNING and resumed:
            task.heartbeat_at = now  # taken over: ours now
            task.save(update_fields=["heartbeat_at"])
        elif task.status == TaskStatus.RUNNING:
            # Its worker died while running it. A workload that ends its own
            # process (os._exit, a segfault, the out-of-memory killer) would
            # otherwise run again for good, killing a pool process each time.
            if task.starts >= settings.TASK_MAX_STARTS:
                _close(task, TaskStatus.FAILED, error=died_running_it(task.starts))
                return None
            task.heartbeat_at = now  # taken over: ours now
            task.starts += 1
            task.save(update_fields=["heartbeat_at", "starts"])
        if task.status == TaskStatus.QUEUED:
            limit = settings.MAX_RUNNING_TASKS_PER_USER
            now = timezone.now()
            started = {
                "status": TaskStatus.RUNNING,
                "started_at": now,
                "heartbeat_at": now,
                "progress": 0,
                "starts": task.starts + 1,
            }
            if on_postgresql:
                # The row is locked: the update and its event in one statement,
                # which also counts the owner's running tasks, in its own
                # snapshot, taken after the owner's lock was granted: every
                # start committed before it counts.
                updated = _update_with_event(
                    _set(task, started), started, "task.started", only_if=TaskStatus.QUEUED, owner_running_below=limit
                )
                if not updated:
                    raise OwnerAtCapacity(task.kind)  # the row is ours and queued: only the count can refuse
            else:
                if _running_tasks_locked(task.owner_id) >= limit:
                    raise OwnerAtCapacity(task.kind)
                _set(task, started).save(update_fields=list(started))
                record_event(user_id=task.owner_id, kind="task.started", task=task.as_json())
            metrics.task_started(kind=task.kind, created_at=task.created_at, started_at=task.started_at)
        return task


def database_now() -> datetime:
    """Now, by PostgreSQL's clock: a lease is renewed by one worker and read
    by another, whose machines' clocks may differ by seconds; the database's
    is the one they share. A worker whose clock was ahead of the running
    worker's by nearly TASK_LEASE_SECONDS took a live task over and ran it
    a second time. Elsewhere (SQLite: one machine) this process's clock."""
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cast(datetime, cursor.fetchone()[0])


def _check_runnable_here(task: Task) -> None:
    """Raises NotRunnableHere if this process has no workload of the task's
    kind, or its version of the workload refuses the task's parameters."""
    try:
        workload = get_workload(task.kind)
    except UnknownWorkload:
        raise NotRunnableHere(
            task.kind, "workload_missing", f"no workload named {task.kind!r} is installed on this worker"
        ) from None
    try:
        workload.parse(task.params)
    except InvalidParams as exc:
        refused = "; ".join(f"{where}: {' '.join(messages)}" for where, messages in exc.fields.items())
        raise NotRunnableHere(
            task.kind, "params_refused", f"this worker's version of {task.kind!r} refuses its parameters ({refused})"
        ) from None


def fail_not_runnable(*, task_id: uuid.UUID | str, error: str) -> Task | None:
    """Fails a queued or running task that no worker could run (NotRunnableHere
    for TASK_SKEW_WAIT_SECONDS); None if it had ended meanwhile."""
    return _end(task_id, TaskStatus.FAILED, error=error_as_stored(error), queued_too=True)


def _locked_task(task_id: uuid.UUID | str, *, lock_owner: bool = False) -> Task | None:
    """The task, its row locked until commit; with ``lock_owner``
    (PostgreSQL), its owner's event-stream row too, in the same statement
    (the task's row first, as everywhere a task and its owner's stream are
    locked), and None if that row does not exist. A plain statement and
    ``Task.from_db``: every start runs it, and the ORM's
    ``select_for_update().filter(pk=...).first()`` spent ~0.7 ms more of the
    worker's CPU building the same statement, ``Task.objects.raw()`` still
    ~0.2 ms matching its columns to fields on every call
    (docs/benchmarks.md)."""
    try:
        pk = _db_pk(task_id)
    except ValidationError:
        return None
    select, converters = _task_reader(lock_owner)
    with connection.cursor() as cursor:
        cursor.execute(select, [pk])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, column, field_converters in converters:
        for convert in field_converters:
            values[index] = convert(values[index], column, connection)
    return Task.from_db(connection.alias, _TASK_ATTNAMES, values)


_TASK_ATTNAMES = [field.attname for field in Task._meta.concrete_fields]
_TaskReader = tuple[str, list[tuple[int, Any, list[Any]]]]
_task_readers: dict[tuple[str, bool], _TaskReader] = {}


def _task_reader(lock_owner: bool) -> _TaskReader:
    """For this connection's database, once: the statement that locks and
    reads a task's row by id (``_locked_task``), and the converters
    (backend's and fields') that turn its values into the fields' (JSON text
    into ``params``, say), as the ORM applies them."""
    reader = _task_readers.get((connection.vendor, lock_owner))
    if reader is None:
        quote = connection.ops.quote_name
        fields = Task._meta.concrete_fields
        columns = ", ".join("t." + quote(cast(str, field.column)) for field in fields)
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        owner = (
            f" JOIN {quote(EventStream._meta.db_table)} s ON s.user_id = t.owner_id"  # FOR UPDATE locks both rows
            if lock_owner
            else ""
        )
        select = f"SELECT {columns} FROM {quote(Task._meta.db_table)} t{owner} WHERE t.id = %s{lock}"  # noqa: S608
        converters = []
        for index, field in enumerate(fields):
            column = field.get_col(Task._meta.db_table)
            found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
            if found:
                converters.append((index, column, found))
        reader = _task_readers[(connection.vendor, lock_owner)] = (select, converters)
    return reader


def _db_pk(task_id: uuid.UUID | str) -> Any:
    """A task id as a raw statement's parameter (SQLite stores UUIDs as hex)."""
    return Task._meta.pk.get_db_prep_value(Task._meta.pk.to_python(task_id), connection)


def _running_tasks_locked(owner_id: int) -> int:
    """How many of the owner's tasks are running, after taking the owner's
    event-stream row lock where the database has row locks: one start at a
    time per owner, so that the count holds until commit. Starts on SQLite
    (which serialises all writers) use it; on PostgreSQL the lock is
    ``_locked_task``'s and the count the start's UPDATE's."""
    stream = connection.ops.quote_name(EventStream._meta.db_table)
    tasks = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:
        lock = f"SELECT 1 FROM {stream} WHERE user_id = %s"  # noqa: S608  # our table names
        cursor.execute(lock + (" FOR UPDATE" if connection.features.has_select_for_update else ""), [owner_id])
        cursor.execute(
            f"SELECT count(*) FROM {tasks} WHERE owner_id = %s AND status = %s",  # noqa: S608
            [owner_id, TaskStatus.RUNNING.value],
        )
        return int(cursor.fetchone()[0])


def died_running_it(starts: int, *, last: str | None = None) -> str:
    """The error of a task whose worker process died each of the ``starts``
    times it ran; ``last``: how it died the last time, if known."""
    times = "once" if starts == 1 else f"{starts} times"
    how = f" (the last time: {last})" if last else ""
    return f"Its worker process died {times} while running it{how}, so it is not run again."


def pool_process_died(*, task_id: uuid.UUID | str, how: str) -> Task | None:
    """The worker's main process saw the pool process running this task
    die (``how``: billiard's "exitcode 1", "signal 11 (SIGSEGV)"). A task
    started TASK_MAX_STARTS times fails now, naming how; another one's
    message goes back to the queue and it runs again once its lease lapses
    (start_task). The task as it is then; None if it is not running, or its
    owner asked to cancel it (its redelivery ends it as cancelled)."""
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id, status=TaskStatus.RUNNING).first()
        if task is None or task.cancel_requested_at is not None:
            return None
        if task.starts >= settings.TASK_MAX_STARTS:
            _close(task, TaskStatus.FAILED, error=died_running_it(task.starts, last=how))
        return task


def report_progress(*, task: Task, percent: int) -> None:
    """Stores a running task's progress and tells its owner (not stored as an event)."""
    updated = Task.objects.filter(pk=task.pk, status=TaskStatus.RUNNING).update(progress=percent)
    if updated:
        task.progress = percent
        push_progress(user_id=task.owner_id, task=task.as_json())


def renew_lease(*, task_id: uuid.UUID | str) -> bool:
    """Renews a running task's lease, by the database's clock; True if it
    must stop: its owner asked to cancel it, or it is gone (deleted with its
    owner's account)."""
    renewed_at = Now() if connection.vendor == "postgresql" else timezone.now()
    Task.objects.filter(pk=task_id, status=TaskStatus.RUNNING).update(heartbeat_at=renewed_at)
    row = Task.objects.filter(pk=task_id).values_list("cancel_requested_at").first()
    return row is None or row[0] is not None


def task_exists(*, task_id: uuid.UUID | str) -> bool:
    return Task.objects.filter(pk=task_id).exists()


# Arrays and objects in a result nest at most this deep. Deeper, the checks
# below recursed past Python's limit (RecursionError: the task stayed running
# for good), and a client's JSON parser may refuse the task: serde_json's
# default limit is 128 levels, and a result sits two or three levels down in
# an answer.
MAX_RESULT_DEPTH = 100


def finish_task(*, task_id: uuid.UUID | str, result: Any, running: Task | None = None) -> Task | None:
    """Ends the task with the workload's result, or fails it readably when
    the database could not store that result: the UPDATE would raise, and
    the task stay running for good."""
    try:
        json.dumps(result, allow_nan=False)  # NaN and Infinity are not JSON; jsonb refuses them
    except (TypeError, ValueError):
        return fail_task(task_id=task_id, error="The workload returned a result that is not JSON.", running=running)
    except RecursionError:
        too_deep = True
    else:
        too_deep = nested_deeper_than(result, MAX_RESULT_DEPTH)
    if too_deep:
        error = f"The workload returned a result nested more than {MAX_RESULT_DEPTH} levels deep."
        return fail_task(task_id=task_id, error=error, running=running)
    unfit = next(unfit_values(result, "result"), None)
    if unfit is not None:
        where, why = unfit
        if why == UNSTORABLE_TEXT:
            error = f"The workload returned text that cannot be stored, at {where}: {UNSTORABLE_TEXT}"
        else:  # stored, it could not be pushed live (registry.MAX_INTEGER)
            error = (
                f"The workload returned an integer past 64 bits, at {where}: return it as text "
                f"(JavaScript reads no integer past 2**53 exactly)."
            )
        return fail_task(task_id=task_id, error=error, running=running)
    return _end(task_id, TaskStatus.SUCCEEDED, result=result, running=running)


# A task's error is cut to this many characters (with a marker saying so):
# it is a message for a person, and every event and answer that shows the
# task carries it. A workload's exception may hold a whole file: before, a
# 10 MB message was stored, and sent in each frame and list that held the task.
MAX_ERROR_LENGTH = 2000


def fail_task(*, task_id: uuid.UUID | str, error: str, running: Task | None = None) -> Task | None:
    """Ends the task as failed with ``error``, cut to MAX_ERROR_LENGTH
    characters, in which a NUL or an unpaired surrogate (which PostgreSQL
    refuses) is written as an escape: a workload's message may quote what it
    read."""
    return _end(task_id, TaskStatus.FAILED, error=error_as_stored(error), running=running)


def error_as_stored(error: str) -> str:
    """``error`` storable and at most MAX_ERROR_LENGTH characters long: an
    overlong one keeps its start and ends with "… [cut: N characters in all]"."""
    # Cut first: escaping 10 MB to keep 2 kB of it would be a waste.
    stored = _storable_text(error[:MAX_ERROR_LENGTH])
    if len(error) <= MAX_ERROR_LENGTH and len(stored) <= MAX_ERROR_LENGTH:
        return stored
    marker = f"… [cut: {len(error):,} characters in all]"
    return stored[: MAX_ERROR_LENGTH - len(marker)] + marker


def _storable_text(text: str) -> str:
    if storable(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def end_cancelled(
    *, task_id: uuid.UUID | str, error: str = "Cancelled by its owner.", running: Task | None = None
) -> Task | None:
    return _end(task_id, TaskStatus.CANCELLED, error=error, running=running)


def _end(
    task_id: uuid.UUID | str,
    status: TaskStatus,
    *,
    result: Any = None,
    error: str = "",
    running: Task | None = None,
    queued_too: bool = False,
) -> Task | None:
    """Moves a running task (``queued_too``: or a queued one) to a terminal
    state, once: a repeat does nothing.

    ``running`` is the task as start_task returned it to the worker running
    it: then one conditional UPDATE replaces locking and reading the row back.
    What an event shows of a running task changes only by that worker
    (progress) or by ending it, which the UPDATE's condition settles.
    """
    if running is not None and one_statement_possible():
        return _end_in_one_statement(running, _terminal_fields(status, result, error))
    with transaction.atomic():
        if running is not None:
            fields = _terminal_fields(status, result, error)
            if not Task.objects.filter(pk=running.pk, status=TaskStatus.RUNNING).update(**fields):
                return None
            _set(running, fields)
            _announce_end(running)
            return running
        ending = [TaskStatus.RUNNING, TaskStatus.QUEUED] if queued_too else [TaskStatus.RUNNING]
        task = Task.objects.select_for_update().filter(pk=task_id, status__in=ending).first()
        if task is None:
            return None
        _close(task, status, result=result, error=error)
        return task


def _end_in_one_statement(running: Task, fields: dict[str, Any]) -> Task | None:
    """``_end`` for the worker running the task, on PostgreSQL: the
    conditional UPDATE and the terminal event in one statement that is its own
    transaction. ``finished_at`` is taken one round trip before the commit
    instead of four, and the worker saves the ORM's UPDATE (~8 % of its CPU,
    docs/benchmarks.md)."""
    ended = _set(copy.copy(running), fields)
    if not _update_with_event(ended, fields, f"task.{ended.status}", only_if=TaskStatus.RUNNING):  # type: ignore[arg-type]
        return None
    _count_end(ended)
    return ended


def _update_with_event(
    task: Task,
    fields: dict[str, Any],
    kind: EventKind,
    *,
    only_if: TaskStatus,
    owner_running_below: int | None = None,
) -> bool:
    """PostgreSQL: one statement writes ``fields`` of the task's row, if its
    status is still ``only_if`` (and, with ``owner_running_below``, if its
    owner has fewer tasks running), and stores the event showing ``task``
    (which already holds the new values); False if the row did not match. Its
    own transaction outside one, else part of the caller's (live.services
    .change_with_event). Saves the ORM's UPDATE and a round trip."""
    quote = connection.ops.quote_name
    table = quote(Task._meta.db_table)
    columns = {name: cast("Field[Any, Any]", Task._meta.get_field(name)) for name in fields}
    assignments = ", ".join(f"{quote(cast(str, field.column))} = %s" for field in columns.values())
    params = [columns[name].get_db_prep_save(value, connection) for name, value in fields.items()]
    change = f"UPDATE {table} SET {assignments} WHERE id = %s AND status = %s"  # noqa: S608
    params += [_db_pk(task.pk), only_if.value]
    if owner_running_below is not None:
        change += f" AND (SELECT count(*) FROM {table} WHERE owner_id = %s AND status = %s) < %s"  # noqa: S608
        params += [task.owner_id, TaskStatus.RUNNING.value, owner_running_below]
    event = change_with_event(change + " RETURNING 1", params, user_id=task.owner_id, kind=kind, task=task.as_json())
    return event is not None


def _terminal_fields(status: TaskStatus, result: Any, error: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"status": status, "result": result, "error": error, "finished_at": timezone.now()}
    if status == TaskStatus.SUCCEEDED:
        fields["progress"] = 100
    return fields


def _close(task: Task, status: TaskStatus, *, result: Any = None, error: str = "") -> None:
    """Writes a terminal state on a locked task, with its event."""
    fields = _terminal_fields(status, result, error)
    _set(task, fields)
    task.save(update_fields=list(fields))
    _announce_end(task)


def _set(task: Task, fields: dict[str, Any]) -> Task:
    for name, value in fields.items():
        setattr(task, name, value)
    return task


def _announce_end(task: Task) -> None:
    """The terminal event, in the transaction that wrote the state."""
    record_event(user_id=task.owner_id, kind=f"task.{task.status}", task=task.as_json())  # type: ignore[arg-type]
    _count_end(task)


def _count_end(task: Task) -> None:
    metrics.task_finished(kind=task.kind, outcome=task.status, started_at=task.started_at, finished_at=task.finished_at)


# --- The owner's actions ------------------------------------------------------


def cancel_task(*, task_id: uuid.UUID | str, owner: User) -> Task:
    """A queued task is cancelled at once; a running one is asked to stop
    (the worker ends it as cancelled). Raises Task.DoesNotExist for another
    user's task and TaskConflict for a finished one."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id, owner=owner)
        if task.is_finished:
            raise TaskConflict(f"The task has already {task.status}.")
        if task.status == TaskStatus.QUEUED:
            _close(task, TaskStatus.CANCELLED, error="Cancelled before it started.")
        elif task.cancel_requested_at is None:
            task.cancel_requested_at = timezone.now()
            task.save(update_fields=["cancel_requested_at"])
        return task


def cancel_active(tasks: QuerySet[Task]) -> list[Task]:
    """Cancels each of ``tasks`` that is queued or running, as its owner's
    cancel would (the admin's action, a deactivated account); the tasks as
    they are after it: ``cancelled``, or running and asked to stop. One that
    finished meanwhile is left out."""
    changed = []
    for task in tasks.filter(status__in=[TaskStatus.QUEUED, TaskStatus.RUNNING]).select_related("owner").iterator():
        try:
            changed.append(cancel_task(task_id=task.pk, owner=task.owner))
        except (TaskConflict, Task.DoesNotExist):
            continue  # it finished meanwhile
    return changed


def retry_task(*, task_id: uuid.UUID | str, owner: User) -> Task:
    """Queues a copy of a finished task as a new task."""
    original = Task.objects.get(pk=task_id, owner=owner)
    if not original.is_finished:
        raise TaskConflict(f"Only a finished task can be retried; this one is {original.status}.")
    return create_task(owner=owner, kind=original.kind, params=original.params, retry_of=original)
