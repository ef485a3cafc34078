from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import models


class TaskStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Task(models.Model):
    """One run of a workload, owned by one user. The single source of truth
    for a task's state; Celery's result backend is off."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: task_owner_recent starts with owner (docs/benchmarks.md:
    # every index is written again on each change of state).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    kind = models.CharField(max_length=64)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the broker accepted the task; null until then (the relay's worklist).
    sent_at = models.DateTimeField(null=True, blank=True)
    # Set by a cancel request on a running task; the worker stops it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Renewed by the worker running the task: its lease. A redelivered task
    # whose lease is fresh is still running somewhere and is not run again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # How many times a worker started running it: a task found running in a
    # redelivered message (its worker died) runs again until it has been
    # started TASK_MAX_STARTS times, then fails (docs/lifecycle.md); a run
    # the database's outage cut short is resumed without counting. A
    # database default: web processes of the release before still insert tasks.
    starts = models.PositiveSmallIntegerField(default=0, db_default=0)
    # Indexed only where set (task_retries below).
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries", db_index=False
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The home page and GET /api/tasks/: one user's tasks, newest first.
            models.Index(fields=["owner", "-created_at", "-id"], name="task_owner_recent"),
            # The admin's list: everyone's tasks, newest first (or a date
            # range of them); without it each page sorted the whole table.
            # ~4 us of PostgreSQL's time and ~280 B of WAL per task (docs/operations.md#admin).
            models.Index(fields=["-created_at", "-id"], name="task_recent"),
            # The relay looks for queued tasks the broker never accepted.
            models.Index(
                fields=["created_at"],
                name="task_unsent",
                condition=models.Q(status="queued", sent_at__isnull=True),
            ),
            # The concurrency cap counts one user's running tasks.
            models.Index(fields=["owner"], name="task_owner_running", condition=models.Q(status="running")),
            # /metrics counts the queued and running tasks by kind at each scrape.
            models.Index(
                fields=["status", "kind"], name="task_active", condition=models.Q(status__in=["queued", "running"])
            ),
            # Deleting a task sets its retries' retry_of to null. Partial: a
            # task that is no retry (most) adds no entry, at creation or at
            # any later change of state.
            models.Index(fields=["retry_of"], name="task_retries", condition=models.Q(retry_of__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def as_json(self) -> dict[str, Any]:
        """The task as the API and every event show it (DESIGN.md §4)."""
        return task_json({name: getattr(self, name) for name in TASK_JSON_FIELDS})


# The columns ``task_json`` reads: a list of many tasks reads only these, as
# ``values()`` rows, without making a model instance of each (docs/benchmarks.md).
TASK_JSON_FIELDS = (
    "id",
    "kind",
    "params",
    "status",
    "progress",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
)


def task_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """A task as the API and every event show it (DESIGN.md §4), from its
    field values: a model instance's or a ``values(*TASK_JSON_FIELDS)`` row."""
    return {
        "id": str(values["id"]),
        "kind": values["kind"],
        "params": values["params"],
        "status": values["status"],
        # 0-100 (DESIGN.md §4): a task that never started has made none.
        "progress": values["progress"] or 0,
        "result": values["result"],
        "error": values["error"] or None,
        "created_at": _iso(values["created_at"]),
        "started_at": _iso(values["started_at"]),
        "finished_at": _iso(values["finished_at"]),
    }


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


class IdempotencyKey(models.Model):
    """A client's ``Idempotency-Key`` for one POST /api/tasks/, kept 24 h."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # SHA-256 of the request's kind and params, to tell a repeat from a misuse.
    fingerprint = models.CharField(max_length=64)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.task_id}"


class Worker(models.Model):
    """A Celery worker of this deployment, as its housekeeper last reported
    it (every RELAY_INTERVAL_SECONDS): the "workers" part of the About page.
    A worker that stops deletes its row; one killed leaves it, seen no more."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)  # Celery's node name, e.g. celery@host
    pid = models.PositiveIntegerField()
    queue = models.CharField(max_length=255)  # TASKLIGHT_QUEUE, which it consumes
    concurrency = models.PositiveIntegerField()  # its pool processes
    # Its RELAY_INTERVAL_SECONDS: how often it reports (the web's may differ).
    report_seconds = models.FloatField(default=5.0)
    # It also marks itself, each report, in the Redis its live events go
    # through (workers.mark_in_layer): a web process that cannot read the
    # mark listens elsewhere. False for a worker of a release before the
    # mark, or without Redis (embedded mode): not checked.
    marks_layer = models.BooleanField(db_default=False, default=False)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["name", "pid"]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"
