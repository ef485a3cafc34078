"""Which workers are running: each worker's housekeeper reports it every
RELAY_INTERVAL_SECONDS (workloads/tasks.py) while it is connected to the
broker, and the About page reads the reports (tasklight/health.py
check_workers). Whatever the broker: kombu's SQL
transport knows no consumers, and asking the workers over the broker
(Celery's ``inspect ping``) waits out a timeout for the last answer."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
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
        marks_layer=layer_marked(),
        started_at=now,
        seen_at=now,
    )


# --- Which Redis and prefix a worker's live events go through ----------------
# A worker publishes its tasks' events to the channel layer of its own
# CHANNEL_LAYER_URL and CHANNEL_LAYER_PREFIX. A web process configured with
# another Redis or prefix never hears them: its sockets get those events only
# from the table, at their next heartbeat (up to 25 s late), and nothing else
# says why. So each report also sets a mark in the worker's Redis, under its
# prefix (the cache's, which derives from the same two variables), and the
# About page looks for each running worker's mark through its own.


def layer_marked() -> bool:
    """Whether this process's workers mark themselves: with Redis (not
    embedded mode, whose layer and cache are of each process's own)."""
    return bool(settings.CHANNEL_LAYER_URL)


def _mark_key(worker_id: uuid.UUID | str) -> str:
    return f"worker-in-layer:{worker_id}"


def mark_in_layer(worker_id: uuid.UUID) -> None:
    """Sets this worker's mark, set before its report to the database so that
    a worker listed is marked, for as long as it counts as running (a killed
    worker's lapses with it). Raises if Redis does not take it."""
    lasts = math.ceil((MISSED_REPORTS + 1) * settings.RELAY_INTERVAL_SECONDS)
    cache.set(_mark_key(worker_id), 1, timeout=lasts)


def unmarked_in_layer(alive: list[Worker]) -> list[Worker]:
    """The workers among these that mark themselves and whose mark this
    process cannot find: their live events go through another Redis, or
    under another CHANNEL_LAYER_PREFIX. Raises if Redis does not answer."""
    marking = [worker for worker in alive if worker.marks_layer]
    if not marking or not layer_marked():
        return []
    found = cache.get_many([_mark_key(worker.pk) for worker in marking])
    return [worker for worker in marking if _mark_key(worker.pk) not in found]


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
