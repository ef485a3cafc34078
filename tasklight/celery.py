"""The Celery application: `celery -A tasklight worker`."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_before_create_process,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from . import logs
from .parent import hold_run_lock, process_exists, stop_with_parent

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")
# Under make run, the web process and the worker (both import this module
# first) end with honcho (tasklight/parent.py), and keep other runs off
# their data directory while they live (tasklight/make_run.py).
stop_with_parent()
hold_run_lock()
# `celery -A tasklight worker`: the settings give a worker's pool processes
# persistent database connections (tasklight/settings.py).
_own_metrics_dir: str | None = None
_METRICS_DIR_PREFIX = "tasklight-worker-metrics-"


def _metrics_base_dir() -> Path:
    """Where workers make their metrics directories: the operator's
    PROMETHEUS_MULTIPROC_DIR, else the temporary directory."""
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir())


def _remove_metrics_dirs_of_dead_workers() -> None:
    """A worker removes its metrics directory as it stops; one killed
    (SIGKILL) cannot. Each directory is named after its worker's pid; one
    named after this worker's own pid is a dead worker's (the pid was reused)."""
    for path in _metrics_base_dir().glob(f"{_METRICS_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(_METRICS_DIR_PREFIX).split("-", 1)[0]
        # A name without a pid is from before the pid was part of it: left.
        if pid.isdigit() and (int(pid) == os.getpid() or not process_exists(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


if "worker" in sys.argv[1:]:
    os.environ["TASKLIGHT_PROCESS"] = "worker"
    # Tasks run in forked pool processes: their metrics go to files that the
    # main process sums (prometheus_client's multiprocess mode), which must be
    # chosen before prometheus_client is imported. A fresh directory for each
    # worker, in the operator's PROMETHEUS_MULTIPROC_DIR if set: old counts
    # must not add up, and two workers given one directory (one .env for
    # all) must not empty or sum each other's files.
    _remove_metrics_dirs_of_dead_workers()
    _own_metrics_dir = tempfile.mkdtemp(prefix=f"{_METRICS_DIR_PREFIX}{os.getpid()}-", dir=_metrics_base_dir())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir
    if "prometheus_client" in sys.modules:
        # Flower's plugin to Celery's command line imported it already, in
        # single-process mode: the metrics created from now on (ours) must
        # take the multiprocess value class all the same.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()

app = Celery("tasklight")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _tune_embedded_broker(**kwargs: object) -> None:
    # kombu's SQLAlchemy transport hands every transport option to
    # create_engine(), so its polling interval can only be set on the class
    # (default 1 s, far too slow for a live demo). Only workers poll. Done at
    # worker start, not at import: importing this module must not load the
    # settings (tasklight/asgi.py sets the environment first).
    from django.conf import settings
    from kombu.transport import sqlalchemy

    sqlalchemy.Transport.polling_interval = settings.EMBEDDED_BROKER_POLLING_INTERVAL
    # Celery's loop for a polling transport waits in drain_events() up to 2 s
    # a call, and once more after a stop is asked: an idle worker took ~7 s
    # to stop and make run's Ctrl-C ended it with SIGKILL (honcho's, at 5 s).
    # Each such wait is cut short to EMBEDDED_BROKER_STOP_CHECK; the loop
    # only looks at the stop flag and calls again. A caller that waits for
    # good (no timeout) still does.
    drain_events = sqlalchemy.Transport.drain_events

    def drain_events_briefly(self: Any, connection: Any, timeout: float | None = None) -> Any:
        if timeout is not None and timeout > settings.EMBEDDED_BROKER_STOP_CHECK:
            timeout = settings.EMBEDDED_BROKER_STOP_CHECK
        return drain_events(self, connection, timeout=timeout)

    sqlalchemy.Transport.drain_events = drain_events_briefly  # type: ignore[method-assign]


@celeryd_after_setup.connect  # after Celery's logging set-up, which shows every one of its warnings
def _silence_the_connection_loss_warning(**kwargs: object) -> None:
    """Celery warns at every broker connection loss that version 6 is to
    stop tasks running then; the settings choose already
    (CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS)."""
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change")


@worker_process_init.connect
def _leave_the_workers_process_group(**kwargs: object) -> None:
    # A process manager that stops a worker by signalling its process group
    # (honcho and foreman, so make run's Ctrl-C) would end the pool processes
    # mid-task while the worker waits for its tasks (Celery's warm shutdown),
    # and Celery logged each as an ERROR. In a group of its own a pool process
    # is stopped by its worker alone; it still dies with it (Celery has the
    # kernel SIGKILL it when the worker dies), and billiard ends such a
    # process's whole group at a time limit. (A forked process cannot be a
    # session leader, the one case where this fails; if it did, the old way.)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


@worker_process_init.connect  # in each pool process, once started
@worker_ready.connect  # in the main process, once the pool is up
def _freeze_start_up_objects(**kwargs: object) -> None:
    # What start-up loaded moves to the garbage collector's permanent
    # generation, as in the web process (tasklight/asgi.py): a full collection
    # walks only what the process made since, instead of stalling a task or the
    # delivery of messages to the pool for 100 ms and more (docs/benchmarks.md).
    gc.freeze()


@worker_ready.connect
def _serve_worker_metrics(**kwargs: object) -> None:
    from .metrics import worker_metrics_server

    worker_metrics_server.start()


@worker_before_create_process.connect
def _forget_live_gauges_of_dead_pool_processes(sender: Any = None, **kwargs: object) -> None:
    """In the main process, before the pool forks a process: at start, and
    to replace one that ended (killed, crashed, ended by the cancel watchdog
    or a hard time limit). A gauge of a live* mode (``livesum``...) is summed
    from one file per process, named after its pid, which prometheus_client
    leaves for the parent to mark dead: a dead pool process's value stayed
    in the worker's sums, and its file was read at every scrape, until the
    worker stopped. Counters and histograms are kept: a dead process's
    counts are part of the totals. ``sender`` is the pool; the process that
    ended has left its list by then."""
    if _own_metrics_dir is None:
        return
    from prometheus_client import multiprocess

    alive = {os.getpid(), *(process.pid for process in getattr(sender, "_pool", ()))}
    for path in Path(_own_metrics_dir).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) not in alive:
            multiprocess.mark_process_dead(int(pid), _own_metrics_dir)


@worker_shutdown.connect
def _stop_worker_metrics(**kwargs: object) -> None:
    from .metrics import worker_metrics_server

    worker_metrics_server.stop()
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


# The Celery task id is the Tasklight task id: every line logged while a task
# runs carries it, Celery's own "succeeded" line included.
@task_prerun.connect
def _log_task_id(task_id: str | None = None, **kwargs: Any) -> None:
    logs.task_id.set(task_id)


@task_postrun.connect
def _forget_task_id(**kwargs: Any) -> None:
    logs.task_id.set(None)
