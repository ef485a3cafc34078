"""Which workers are running: each worker's housekeeper reports it every
RELAY_INTERVAL_SECONDS (workloads/tasks.py) while it is connected to the
broker, and the About page reads the reports (tasklight/health.py
check_workers). Whatever the broker: kombu's SQL
transport knows no consumers, and asking the workers over the broker
(Celery's ``inspect ping``) waits out a timeout for the last answer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from tasklight import retention

from .models import Worker

# A report missed this many times over and the worker counts as gone.
MISSED_REPORTS = 3
# Rows of workers killed without a chance to delete them go this long after
# they were last seen, at the next cleanup (workloads/tasks.py: every
# worker's, hourly, and manage.py cleanup). Until then the About page says
# when a queue's last worker was seen.
FORGET_AFTER = timedelta(days=1)


def report_alive(worker_id: uuid.UUID, *, name: str, pid: int, concurrency: int) -> None:
    """This worker is alive now. Its first report makes its row."""
    now = timezone.now()
    if Worker.objects.filter(pk=worker_id).update(seen_at=now):
        return
    Worker.objects.create(
        id=worker_id,
        name=name,
        pid=pid,
        queue=settings.CELERY_TASK_DEFAULT_QUEUE,
        concurrency=concurrency,
        report_seconds=settings.RELAY_INTERVAL_SECONDS,
        started_at=now,
        seen_at=now,
    )


def report_stopped(worker_id: uuid.UUID) -> None:
    Worker.objects.filter(pk=worker_id).delete()


def forget_unseen(*, batch: int = retention.BATCH) -> int:
    """Deletes the rows of workers unseen for FORGET_AFTER, of every queue
    (a worker alive reports every few seconds, whichever its queue);
    returns how many."""
    return retention.delete_in_batches(Worker.objects.filter(seen_at__lt=timezone.now() - FORGET_AFTER), batch=batch)


@dataclass(frozen=True)
class Fleet:
    """The workers of this deployment's queue: those seen lately, and when
    any was last seen (None if none has reported since FORGET_AFTER)."""

    alive: list[Worker]
    last_seen: datetime | None


def fleet() -> Fleet:
    """Each worker is judged by its own report interval, which the process
    asking need not share."""
    workers = list(Worker.objects.filter(queue=settings.CELERY_TASK_DEFAULT_QUEUE))
    now = timezone.now()
    return Fleet(
        alive=[
            worker
            for worker in workers
            if worker.seen_at >= now - timedelta(seconds=MISSED_REPORTS * worker.report_seconds)
        ],
        last_seen=max((worker.seen_at for worker in workers), default=None),
    )
