"""Celery entry points: thin, they take ids and call the service layer."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import services
from .registry import Run, UnknownWorkload, WorkloadFailed, get_workload

logger = logging.getLogger(__name__)


@shared_task(
    name="tasklight.run_task",
    acks_late=True,
    soft_time_limit=settings.TASK_SOFT_TIME_LIMIT,
    time_limit=settings.TASK_TIME_LIMIT,
)
def run_task(task_id: str) -> None:
    task = services.start_task(task_id=task_id)
    if task is None:
        logger.info("task %s is finished or gone; not running it", task_id)
        return
    try:
        workload = get_workload(task.kind)
        result = workload.run(task.params, Run(lambda percent: services.report_progress(task=task, percent=percent)))
    except UnknownWorkload:
        services.fail_task(task_id=task_id, error=f"No workload named {task.kind!r} is installed on this worker.")
    except WorkloadFailed as exc:
        services.fail_task(task_id=task_id, error=str(exc))
    except SoftTimeLimitExceeded:
        services.fail_task(
            task_id=task_id, error=f"The task ran longer than its time limit of {settings.TASK_SOFT_TIME_LIMIT} s."
        )
    except Exception as exc:
        logger.exception("task %s (%s) raised", task_id, task.kind)
        services.fail_task(task_id=task_id, error=f"The workload crashed: {type(exc).__name__}: {exc}")
    else:
        services.finish_task(task_id=task_id, result=result)
