"""The bare Celery ceiling: a Celery app of its own, no Django, one no-op task.

    BENCH_BARE_QUEUE=q celery -A bench.bare_celery worker -c 2 -Q q

Each run of the task records, in one non-transactional Redis round trip, a
count and the earliest and latest wall-clock time a task ran at, so the
harness can time the drain from the first task executed to the last one,
leaving the worker's start-up out. With BENCH_BARE_LIKE_TASKLIGHT=1 the app
takes Tasklight's Celery settings (late acks, requeue on a lost worker,
prefetch 1; Celery's task events only with CELERY_EVENTS=1, as in
tasklight/settings.py), to show what those cost on their own.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

BROKER_URL = os.environ.get("BENCH_BARE_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BENCH_BARE_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_BARE_QUEUE", "tasklight-bench-bare")
KEY = os.environ.get("BENCH_BARE_KEY", QUEUE)

app = Celery("bench_bare", broker=BROKER_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_BARE_LIKE_TASKLIGHT") == "1":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=os.environ.get("CELERY_EVENTS") == "1",
        task_send_sent_event=os.environ.get("CELERY_EVENTS") == "1",
    )

_redis: Any = None


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(REDIS_URL)
    now = time.time()
    pipe = _redis.pipeline(transaction=False)
    pipe.incr(f"{KEY}:count")
    pipe.zadd(f"{KEY}:first", {"t": now}, lt=True)
    pipe.zadd(f"{KEY}:last", {"t": now}, gt=True)
    pipe.execute()


def keys() -> list[str]:
    return [f"{KEY}:count", f"{KEY}:first", f"{KEY}:last"]


def publish(count: int) -> float:
    """Publishes ``count`` tasks from this process; returns the rate (tasks/s)."""
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:  # type: ignore[attr-defined]
        for _ in range(count):
            noop.apply_async(producer=producer)
    return count / max(time.perf_counter() - started, 1e-9)


if __name__ == "__main__":
    import sys

    total = int(sys.argv[1])
    print(f"published {total} {publish(total):.1f}", flush=True)
