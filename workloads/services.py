"""Every change of a task's state happens here, and nowhere else.

The API, the pages and the worker call these functions; each one runs in a
transaction, saves only the fields it changes and records the lifecycle event
in that same transaction (live.services.record_event).
"""

from __future__ import annotations

import json
import logging
import uuid
from functools import partial
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from live.services import push_progress, record_event

from .models import Task, TaskStatus
from .registry import get_workload

logger = logging.getLogger(__name__)


def create_task(*, owner: User, kind: str, params: Any) -> Task:
    """Validates and stores a task, then sends it to the broker after commit.

    Raises UnknownWorkload or InvalidParams; nothing is stored then.
    """
    normalised = get_workload(kind).normalise(params)
    with transaction.atomic():
        task = Task.objects.create(owner=owner, kind=kind, params=normalised)
        record_event(user_id=owner.pk, kind="task.queued", task=task.as_json())
        # Sent only once the row is committed: a worker never looks for a task
        # that is not there yet, and a rolled-back task is never sent.
        transaction.on_commit(partial(_send_to_broker, task.id))
    return task


def _send_to_broker(task_id: uuid.UUID) -> None:
    from .tasks import run_task

    try:
        run_task.apply_async(args=(str(task_id),), task_id=str(task_id))
    except Exception:
        # The task stays queued in the database; see docs/architecture.md.
        logger.exception("could not send task %s to the broker", task_id)


def start_task(*, task_id: uuid.UUID | str) -> Task | None:
    """Marks a task running; None when it must not run (gone or finished).

    A task found already running was redelivered after its worker died: it
    runs again from the start, without a second ``task.started``.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.is_finished:
            return None
        if task.status == TaskStatus.QUEUED:
            task.status = TaskStatus.RUNNING
            task.started_at = timezone.now()
            task.progress = 0
            task.save(update_fields=["status", "started_at", "progress"])
            record_event(user_id=task.owner_id, kind="task.started", task=task.as_json())
        return task


def report_progress(*, task: Task, percent: int) -> None:
    """Stores a running task's progress and tells its owner (not stored as an event)."""
    updated = Task.objects.filter(pk=task.pk, status=TaskStatus.RUNNING).update(progress=percent)
    if updated:
        task.progress = percent
        push_progress(user_id=task.owner_id, task=task.as_json())


def finish_task(*, task_id: uuid.UUID | str, result: Any) -> Task | None:
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        return fail_task(task_id=task_id, error="The workload returned a result that is not JSON.")
    return _end(task_id, TaskStatus.SUCCEEDED, result=result)


def fail_task(*, task_id: uuid.UUID | str, error: str) -> Task | None:
    return _end(task_id, TaskStatus.FAILED, error=error)


def _end(task_id: uuid.UUID | str, status: TaskStatus, *, result: Any = None, error: str = "") -> Task | None:
    """Moves a running task to a terminal state, once: a repeat does nothing."""
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id, status=TaskStatus.RUNNING).first()
        if task is None:
            return None
        task.status = status
        task.result = result
        task.error = error
        task.finished_at = timezone.now()
        fields = ["status", "result", "error", "finished_at"]
        if status == TaskStatus.SUCCEEDED:
            task.progress = 100
            fields.append("progress")
        task.save(update_fields=fields)
        record_event(user_id=task.owner_id, kind=f"task.{status}", task=task.as_json())  # type: ignore[arg-type]
        return task
