"""Celery entry points: thin, they take ids and call the service layer.

Besides ``run_task``, this module gives each pool process a cancel watchdog
and each worker a relay that sends tasks the broker never accepted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import random
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

# billiard >= 4.3.2 (Celery 5.7's own requirement); the type stubs predate both.
from billiard.common import terminate_handler_fired  # type: ignore[attr-defined]
from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from billiard.exceptions import WorkerLostError
from celery import Task as CeleryTask
from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerShutdown, WorkerTerminate
from celery.signals import worker_init, worker_ready, worker_shutdown
from celery.worker.control import inspect_command
from celery.worker.request import Request
from django.conf import settings
from django.db import close_old_connections, connection

from accounts.services import delete_expired_sessions
from live.publisher import publisher
from live.services import delete_expired_events
from tasklight import db, logs, metrics
from tasklight.embedded_broker import delete_delivered_messages, waiting_task_ids

from . import confirmed, services, workers
from .models import Task
from .registry import Cancelled, Run, Workload, WorkloadFailed, get_workload

logger = logging.getLogger(__name__)


class TasklightRequest(Request):
    """A task's message in the worker's main process."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        # The pool process running the task died: Celery sends the message
        # back to the queue (task_reject_on_worker_lost) and the task runs
        # again. Its start is counted: the last one allowed fails it, in
        # the pool deaths' thread (never here, on the main process's loop).
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # as billiard hands it over
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            PoolDeaths.of_this_process().report(self.id, str(exc))
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class PoolDeaths(threading.Thread):
    """In a worker's main process: looks at the task of each pool process
    that died (services.pool_process_died), one at a time, off the main
    process's event loop. That loop receives and acknowledges every task's
    message, hands tasks to the pool and answers remote control (the
    liveness probe); with the database silent (its host lost), a query there
    held all of it for the connect timeout (10 s) per death. Started at the
    first death; what is left at shutdown waits HOUSEKEEPER_STOP_SECONDS at
    most (a task not looked at is counted at its next start all the same)."""

    _instance: PoolDeaths | None = None
    _lock = threading.Lock()

    @classmethod
    def of_this_process(cls) -> PoolDeaths:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
                cls._instance.start()
            return cls._instance

    @classmethod
    def stop_in_this_process(cls, timeout: float) -> None:
        with cls._lock:
            deaths, cls._instance = cls._instance, None
        if deaths is not None:
            deaths.deaths.put(None)
            deaths.join(timeout)

    def __init__(self) -> None:
        super().__init__(name="tasklight-pool-deaths", daemon=True)
        self.deaths: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()

    def report(self, task_id: str, message: str) -> None:
        self.deaths.put((task_id, message))

    def run(self) -> None:
        while (death := self.deaths.get()) is not None:
            try:
                _pool_process_died(*death)
            except Exception:
                logger.exception("task %s: its pool process died; looking at its task failed", death[0])


# billiard's WorkerLostError: "Worker exited prematurely: signal 9 (SIGKILL) Job: 3."
_HOW_IT_DIED = re.compile(r"exited prematurely: (?P<how>.+?)(?: Job: \d+)?\.?$")


def _pool_process_died(task_id: str, message: str) -> None:
    match = _HOW_IT_DIED.search(message)
    how = match["how"] if match else message
    if how == f"exitcode {logs.WATCHDOG_EXIT_CODE}":
        return  # the cancel watchdog's: it ended the task first
    try:
        task = services.pool_process_died(task_id=task_id, how=how)
    except Exception as exc:
        # The redelivered message counts the start all the same (start_task).
        logger.warning("task %s: its pool process died (%s); could not look at its task: %s", task_id, how, exc)
        return
    finally:
        # This process forks pool processes: no connection kept to inherit.
        connection.close()
    if task is None:
        return
    if task.is_finished:
        logger.warning(
            "task %s: its pool process died (%s), the %s time it ran it: failed",
            task_id,
            how,
            _ordinal(task.starts),
            extra={"task_id": task_id},
        )
    else:
        logger.warning(
            "task %s: its pool process died (%s); it runs again (it has started %d of at most %d times)",
            task_id,
            how,
            task.starts,
            settings.TASK_MAX_STARTS,
            extra={"task_id": task_id},
        )


def _ordinal(number: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(number, f"{number}th")


class TasklightTask(CeleryTask):
    Request = TasklightRequest

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # On a hard time limit Celery kills the process running the task and
        # calls this in the worker's main process: the task must still end.
        if isinstance(exc, TimeLimitExceeded):
            limit = exc.args[0] if exc.args else "its"
            services.fail_task(task_id=task_id, error=f"The task was stopped at its hard time limit of {limit} s.")


DATABASE_RETRY_MAX_SECONDS = 30

# A message's "again": False, a first send; True, it may be a redelivery (the
# worker that held it died, or may have): a task found running is taken over
# once its lease has lapsed, counting a start (TASK_MAX_STARTS); RESUME, this
# worker's own retry of a run the database cut short: taken over the same
# way, without counting a start, since no process died. A value of "again"
# rather than a third argument: a worker of the release before takes it for
# True (a run_task without the argument would refuse the message).
RESUME = "resume"


@dataclass
class Delivery:
    """What one message of run_task says, and what its run did so far."""

    again: bool | str
    # The broker delivered it again: whoever held it died, or lost the broker.
    redelivered: bool
    # This run marked the task running (a first start or a takeover).
    started: bool = False

    @property
    def may_take_over(self) -> bool:
        return bool(self.again) or self.redelivered

    @property
    def resumes(self) -> bool:
        return self.again == RESUME and not self.redelivered

    def again_after_database_outage(self) -> bool | str:
        """The retry's "again" after a database error: RESUME if this run
        had started the task and the database went away (no process died),
        or if it came to resume and had not started yet; else a takeover
        that counts a start. An error the database was not away for (a
        deadlock, or one backend ended: db.database_away) counts, as before,
        so a workload that meets one on every run still ends after
        TASK_MAX_STARTS runs instead of running for good."""
        if self.started:
            return RESUME if db.database_away() else True
        return RESUME if self.resumes else True


# max_retries=None: retry without limit (Celery's retry() falls back to the
# task's own max_retries, 3 by default, when given None).
@shared_task(bind=True, base=TasklightTask, name="tasklight.run_task", acks_late=True, max_retries=None)
def run_task(self: CeleryTask, task_id: str, again: bool | str = False, **later: Any) -> None:
    # ``later``: arguments a later release may add to the message, which
    # this one ignores. Without it, a worker of this release that got such
    # a message during a rolling deploy raised TypeError before running
    # anything, Celery acknowledged the message, and the task stayed queued
    # for good (already sent, the relay never sends it again).
    # The pool process keeps its connection between tasks (WORKER_CONN_MAX_AGE):
    # drop it here if it is too old or broke (health-checked on first use,
    # unless the last task used it a moment ago: tasklight/db.py).
    close_old_connections()
    db.skip_check_if_just_used()
    delivery = Delivery(again=again, redelivered=bool((self.request.delivery_info or {}).get("redelivered")))
    try:
        _run(self, task_id, delivery)
        db.mark_used()
    except db.DATABASE_DOWN as exc:
        again_later = delivery.again_after_database_outage()  # before the connection is closed
        close_old_connections()
        logger.warning("task %s: database unavailable, retrying: %s", task_id, exc)
        # A retry is a new message: "again" lets it resume a task it had started.
        raise _retry_confirmed(
            self,
            task_id,
            exc=exc,
            countdown=min(DATABASE_RETRY_MAX_SECONDS, 2**self.request.retries),
            kwargs={"task_id": task_id, "again": again_later},
        ) from None


def _retry_confirmed(self: CeleryTask, task_id: str, **retry: Any) -> BaseException:
    """Celery's retry of this message (a new message, and this one
    acknowledged), its new message sent on a link whose messages RabbitMQ
    confirms (workloads/confirmed.py): the retry, once RabbitMQ has it on
    disk. Celery's own retry() sends unconfirmed: with RabbitMQ blocking
    publishers (a memory or disk alarm), a restart lost the new message after
    this one was acknowledged, and the task stayed running (or queued) for
    good, with no message left to run it. If RabbitMQ does not confirm it in
    time, or the send fails (Celery then rejects the message for good),
    this message goes back to the queue as it is, after a pause: a
    redelivery, so a task it finds running is taken over once its lease has
    lapsed, counting a start. On the embedded broker, Celery's retry as it is."""
    try:
        with confirmed.producers.acquire() as link:
            if link is None:
                return self.retry(**retry, throw=False)
            timeout = settings.BROKER_PUBLISH_TIMEOUT
            # Celery's publish retries off: a retry on a new channel would number its messages anew.
            on_link: dict[str, Any] = {"producer": link.producer, "retry": False, "timeout": timeout}
            sent = self.retry(**retry, throw=False, **on_link)
            link.confirms.add(task_id)
            if not link.confirms.wait(timeout):
                raise TimeoutError(f"RabbitMQ did not confirm it within {timeout:g} s")
            return sent
    except Exception as failure:
        logger.warning("task %s: its retry not sent (%s); its message goes back to the queue", task_id, failure)
        return _back_to_the_queue(f"its retry could not be sent: {failure}")


def _run(self: CeleryTask, task_id: str, delivery: Delivery) -> None:
    try:
        task = services.start_task(task_id=task_id, redelivered=delivery.may_take_over, resumed=delivery.resumes)
    except services.OwnerAtCapacity as full:
        # Wait in the queue, not in this worker: other users' tasks go first.
        countdown = 1 + random.random()  # noqa: S311
        if not services.send_to_broker(task_id=task_id, kind=full.kind, countdown=countdown, again=delivery.again):
            services.leave_to_relay(task_id)
        return
    except services.StillRunningElsewhere as elsewhere:
        # Look again once the lease could have lapsed: if that worker died
        # meanwhile, this message takes the task over.
        if not services.send_to_broker(
            task_id=task_id,
            kind=elsewhere.kind,
            countdown=settings.TASK_LEASE_SECONDS / 2,
            again=RESUME if delivery.resumes else True,
        ):
            # This message may be the task's last (its worker died a moment
            # ago): back to the queue rather than acknowledged, after a pause
            # that keeps it from looping through the workers meanwhile.
            raise _back_to_the_queue("its message could not be sent again to look later; requeued") from None
        return
    except services.NotRunnableHere as exc:
        _hand_back(self, task_id, exc, again=delivery.again or delivery.redelivered)
        return
    if task is None:
        logger.info("task %s is finished, cancelled or running elsewhere; not running it", task_id)
        return
    delivery.started = True
    workload = get_workload(task.kind)  # start_task checked that this worker has it
    # The task id comes from the context (tasklight/celery.py); see docs/observability.md.
    logger.info("task started", extra={"kind": task.kind})
    cancel = threading.Event()
    watchdog = CancelWatchdog.of_this_process()
    watch = watchdog.watch(task_id, cancel)
    run = Run(lambda percent: services.report_progress(task=task, percent=percent), cancel)
    try:
        ended = _run_workload(workload, task, run)
    except db.DATABASE_DOWN:
        raise
    except Exception as exc:
        # Its outcome could not be written (a bug of ours, or a result or an
        # exception that defeated the checks): still, the task must end, or
        # it stays running for good, holding a place of its owner's cap (the
        # message is acknowledged, and RabbitMQ never delivers it again).
        logger.exception("task %s (%s): its outcome could not be stored; failing it", task_id, task.kind)
        connection.close()  # it may have failed in the middle of a query (a soft time limit)
        ended = services.fail_task(
            task_id=task_id,
            error=f"The workload ended, but its outcome could not be stored ({type(exc).__name__}).",
            running=task,
        )
    finally:
        watchdog.unwatch(watch)
    if ended is not None:
        logger.info("task ended", extra={"kind": ended.kind, "outcome": ended.status})


# A message that this worker could not send again for later goes back to
# the queue after this pause (the broker being away: a loop would spin).
REQUEUE_PAUSE_SECONDS = 1.0


def _back_to_the_queue(why: str) -> Reject:
    """This message, not acknowledged but requeued as it is, after
    REQUEUE_PAUSE_SECONDS: what to raise when it could not be sent again."""
    time.sleep(REQUEUE_PAUSE_SECONDS)
    return Reject(why, requeue=True)


# Message headers a hand-back carries from worker to worker (a worker of an
# older release ignores them): when the first worker handed the task back
# (its wall clock, seconds since the epoch) and how many times it went back.
HANDED_BACK_SINCE = "tasklight_handed_back_since"
HANDED_BACK_TIMES = "tasklight_handed_back_times"
# The wait before the next worker looks at it doubles each time up to this:
# a queue of such tasks must not spin through the workers.
HAND_BACK_MAX_COUNTDOWN = 30.0


def _hand_back(self: CeleryTask, task_id: str, refused: services.NotRunnableHere, *, again: bool | str) -> None:
    """This worker cannot run the task (web processes and workers of two
    releases, or WORKLOAD_MODULES that differ): back to the queue, for a
    worker that can, for up to TASK_SKEW_WAIT_SECONDS since the first worker
    handed it back; then it fails, saying why. Never in a loop: the waits
    grow, and the deadline travels with the message."""
    now = time.time()
    since, times = _handed_back_so_far(self, now)
    waited = max(now - since, 0.0)  # another machine's clock may be ahead
    wait = settings.TASK_SKEW_WAIT_SECONDS
    if waited >= wait:
        error = (
            f"No worker could run this task: {refused.detail}"
            + (f", and no other worker took it within {wait:g} s" if wait else "")
            + ". The web process that accepted it and the workers differ in their workloads "
            "(a deployment under way, or WORKLOAD_MODULES that differ): queue it again once they agree."
        )
        ended = services.fail_not_runnable(task_id=task_id, error=error)
        logger.error(
            "task %s: no worker could run it (%s) in %.0f s, handed back %d time(s): %s",
            task_id,
            refused.detail,
            waited,
            times,
            "failed" if ended is not None else "it had ended meanwhile",
            extra={"task_id": task_id},
        )
        return
    countdown = min(2.0 ** min(times, 5), HAND_BACK_MAX_COUNTDOWN, max(wait - waited, 0.0)) * (1 + random.random() / 4)  # noqa: S311
    sent = services.send_to_broker(
        task_id=task_id,
        kind=refused.kind,
        countdown=countdown,
        again=again,
        headers={HANDED_BACK_SINCE: since, HANDED_BACK_TIMES: times + 1},
    )
    if sent:
        metrics.task_handed_back(kind=refused.kind, reason=refused.reason)
    else:
        services.leave_to_relay(task_id)  # sent again by a relay: the wait above starts over
    logger.warning(
        "task %s: this worker cannot run it (%s): %s; it fails if no worker runs it within "
        "TASK_SKEW_WAIT_SECONDS (%g s; %.0f s so far)",
        task_id,
        refused.detail,
        f"handed back to the queue for another worker (time {times + 1}, in {countdown:.1f} s)"
        if sent
        else "could not hand it back to the broker",
        wait,
        waited,
        extra={"task_id": task_id},
    )


def _handed_back_so_far(self: CeleryTask, now: float) -> tuple[float, int]:
    """(when the first worker handed the task back, how many times it went
    back), from the message's headers; (now, 0) the first time."""
    since, times = self.request.get(HANDED_BACK_SINCE), self.request.get(HANDED_BACK_TIMES)
    if not isinstance(since, int | float) or isinstance(since, bool) or not math.isfinite(since):
        since = now
    if not isinstance(times, int) or isinstance(times, bool) or times < 0:
        times = 0
    return float(since), times


def _run_workload(workload: Workload, task: Task, run: Run) -> Task | None:
    """Runs the workload and ends its task by what it did; the task as
    ended, or None if something else ended it first."""
    task_id = task.pk
    try:
        result = workload.run(task.params, run)
    except Cancelled:
        return services.end_cancelled(task_id=task_id, running=task)
    except WorkloadFailed as exc:
        return services.fail_task(task_id=task_id, error=_message_of(exc), running=task)
    except SystemExit as exc:
        # billiard's own handler of a signal that ends this pool process
        # (SIGTERM, SIGQUIT...) raises SystemExit, after setting the flag
        # that terminate_handler_fired() reads; Celery's are
        # WorkerShutdown and WorkerTerminate. Those are let through. Any
        # other was the workload's (argparse on a bad argument calls
        # sys.exit(2)): before, it ended the pool process, and the task ran
        # again on every redelivery.
        if terminate_handler_fired() or isinstance(exc, (WorkerShutdown, WorkerTerminate)):
            raise
        _forget_exit_code()
        called = "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
        return services.fail_task(task_id=task_id, error=f"The workload called {called}.", running=task)
    except SoftTimeLimitExceeded:
        # The limit may strike in the middle of a query, which psycopg leaves
        # in progress on the connection ("another command is already in
        # progress"): the failure is written on a new one. Else it was taken
        # for the database being down, retried, and the task ran again.
        connection.close()
        limit = workload.soft_time_limit or settings.TASK_SOFT_TIME_LIMIT
        return services.fail_task(
            task_id=task_id, error=f"The task ran longer than its time limit of {limit:g} s.", running=task
        )
    except db.DATABASE_DOWN:
        raise
    except Exception as exc:
        logger.exception("task %s (%s) raised", task_id, task.kind)
        return services.fail_task(
            task_id=task_id, error=f"The workload crashed: {type(exc).__name__}: {_message_of(exc)}", running=task
        )
    if run.saw_cancel:
        # It returned because of the cancel (run.cancelled() told it so):
        # what it returns is a part, and its owner asked for none.
        return services.end_cancelled(task_id=task_id, running=task)
    return services.finish_task(task_id=task_id, result=result, running=task)


def _forget_exit_code() -> None:
    """billiard's pool process wraps sys.exit() to remember the code it
    was called with, and exits with it when it ends, even long after and
    for another reason (its worker's warm shutdown, which exits 0). A call
    without a code puts back what it remembered before the workload's."""
    with contextlib.suppress(SystemExit):
        sys.exit()


def _message_of(exc: BaseException) -> str:
    """``str(exc)``, which a workload's own exception class may break (its
    ``__str__`` raised, and the task stayed running)."""
    try:
        return str(exc)
    except Exception as broken:
        return f"(its message could not be read: {type(broken).__name__})"


@dataclass(eq=False)
class Watch:
    task_id: str
    cancel: threading.Event


class CancelWatchdog(threading.Thread):
    """Keeps the running task's lease and watches for its owner's cancel
    request: one thread per pool process, kept from task to task (starting
    and stopping one per task cost ~0.1 ms of CPU, and a new database
    connection for every task that ran past its first poll).

    Every CANCEL_POLL_SECONDS it renews the lease and looks at the task's row. Once a cancel is
    requested, or the row is gone (its owner's account deleted), it sets the
    event behind ``run.cancelled()``; if the workload
    has not stopped CANCEL_GRACE_SECONDS later, it ends the task as cancelled
    and ends this pool process at once, with WATCHDOG_EXIT_CODE (Celery starts
    a new one; the message comes back and is dropped, since the task is finished).
    """

    _instance: CancelWatchdog | None = None
    _pid: int | None = None

    @classmethod
    def of_this_process(cls) -> CancelWatchdog:
        # A forked process (Celery's prefork pool) inherits the object, not the thread.
        if cls._pid != os.getpid():
            cls._instance, cls._pid = cls(), os.getpid()
            cls._instance.start()
        assert cls._instance is not None
        return cls._instance

    def __init__(self) -> None:
        super().__init__(name="cancel-watchdog", daemon=True)
        self.changed = threading.Condition()
        self.watched: Watch | None = None
        self.stopping = False

    def watch(self, task_id: str, cancel: threading.Event) -> Watch:
        with self.changed:
            self.watched = Watch(task_id, cancel)
            self.changed.notify()
            return self.watched

    def unwatch(self, watch: Watch) -> None:
        with self.changed:
            if self.watched is watch:
                self.watched = None
                self.changed.notify()

    def stop(self) -> None:
        """Ends the thread (and closes its database connection)."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
        self.join(timeout=10)

    def _still(self, watch: Watch, seconds: float) -> bool:
        """Waits up to ``seconds`` while ``watch`` stays watched; True if it still is."""
        with self.changed:
            return not self.changed.wait_for(lambda: self.watched is not watch or self.stopping, timeout=seconds)

    def run(self) -> None:
        try:
            while True:
                with self.changed:
                    self.changed.wait_for(lambda: self.watched is not None or self.stopping)
                    if self.stopping:
                        return
                    watch = self.watched
                assert watch is not None
                try:
                    self._follow(watch)
                except Exception:
                    logger.exception("cancel watchdog of task %s failed", watch.task_id)
                finally:
                    close_old_connections()
                # Done with this task, whatever ended the following: wait for the next.
                with self.changed:
                    self.changed.wait_for(lambda: self.watched is not watch or self.stopping)  # noqa: B023
        finally:
            connection.close()

    def _follow(self, watch: Watch) -> None:
        while self._still(watch, settings.CANCEL_POLL_SECONDS):
            try:
                cancel_requested = services.renew_lease(task_id=watch.task_id)
            except db.DATABASE_DOWN as exc:
                # Its connection broke (PostgreSQL restarted, the backend was
                # ended): look again on a new one. Giving up on the task would
                # ignore its cancel and let its lease lapse, and another worker
                # would run it a second time.
                logger.warning(
                    "cancel watchdog of task %s: database unavailable, will look again: %s",
                    watch.task_id,
                    exc,
                    extra={"task_id": watch.task_id},
                )
                connection.close()
                continue
            if cancel_requested:
                watch.cancel.set()
                break
        else:
            return  # the task ended
        # No longer renewed: the lease (TASK_LEASE_SECONDS) outlasts the grace
        # (tasklight/settings.py refuses otherwise), so the kill comes first.
        grace = settings.CANCEL_GRACE_SECONDS
        if not self._still(watch, grace):
            return
        ended = services.end_cancelled(
            task_id=watch.task_id,
            error=f"Cancelled by its owner; stopped after it ran {grace:g} s past the request.",
        )
        if ended is not None:
            publisher.flush(2.0)
            why = "ignored its cancellation"
        elif services.task_exists(task_id=watch.task_id):
            return  # it ended meanwhile
        else:
            why = "was deleted with its owner's account and did not stop"
        with self.changed:
            # Holding the lock: the task cannot be unwatched, nor another one
            # started, before the kill.
            if self.watched is watch and not self.stopping:
                logger.warning(
                    "task %s %s for %s s: ending its pool process (pid %s, exit code %s)",
                    watch.task_id,
                    why,
                    grace,
                    os.getpid(),
                    logs.WATCHDOG_EXIT_CODE,
                    extra={"task_id": watch.task_id},  # the watchdog's thread has no task context
                )
                # At once, without clean-up, as SIGKILL would; the exit code tells Celery's main
                # process (its lines about the exit are INFO: tasklight.logs.WatchdogExitFilter).
                os._exit(logs.WATCHDOG_EXIT_CODE)


class Housekeeper(threading.Thread):
    """In every worker's main process: sends queued tasks that never reached
    the broker (every RELAY_INTERVAL_SECONDS) and, on a broker that does not
    deliver a dead worker's message again, what a stopped worker took with
    it (once, at start) and running tasks abandoned by their worker;
    deletes expired events, idempotency keys and sessions, the embedded
    broker's delivered messages and the reports of workers unseen for a day
    (every CLEANUP_INTERVAL_SECONDS). Doing any of it in
    several workers at once is harmless. Reports the worker alive on each
    round, and gone as it stops (workloads/workers.py)."""

    def __init__(self, *, name: str, concurrency: int, consumer: Any = None) -> None:
        super().__init__(name="tasklight-housekeeper", daemon=True)
        self.stopping = threading.Event()
        self.next_cleanup = time.monotonic()
        self.worker_id = uuid.uuid4()
        self.worker_name = name
        self.concurrency = concurrency
        self.consumer = consumer
        self.said_disconnected = False
        self.said_unmarked = False
        # The worker's readiness (worker_readiness below): when a round last
        # reported it to the database (time.monotonic()), and why the last
        # round did not, if it did not.
        self.reported_at: float | None = None
        self.not_reported: str | None = "starting: not reported to the database yet"

    def run(self) -> None:
        self.report_alive()
        if _queued_at_start or _running_at_start:
            self.send_again_what_a_stopped_worker_took()
        while not self.stopping.wait(settings.RELAY_INTERVAL_SECONDS):
            close_old_connections()
            self.report_alive()
            try:
                sent = services.relay_unsent(older_than=settings.RELAY_MIN_AGE_SECONDS)
                if sent:
                    logger.info("relay: sent %d task(s) the broker had not accepted", sent)
                if settings.RESEND_ABANDONED_TASKS:
                    sent = services.resend_abandoned(older_than=3 * settings.TASK_LEASE_SECONDS)
                    if sent:
                        logger.warning("relay: sent again %d running task(s) whose worker died", sent)
            except Exception as exc:
                logger.warning("relay: will try again: %s", exc)
            if time.monotonic() >= self.next_cleanup:
                self.next_cleanup = time.monotonic() + settings.CLEANUP_INTERVAL_SECONDS
                try:
                    cleaned = cleanup()
                    if any(cleaned):
                        logger.info("cleanup: deleted %s", cleaned)
                except Exception as exc:
                    logger.warning("cleanup: will try again: %s", exc)
        try:
            workers.report_stopped(self.worker_id)
        except Exception as exc:
            logger.warning("workers: could not report this worker stopped (it will count as gone): %s", exc)
        connection.close()

    def consuming(self) -> bool:
        """Whether the worker's consumer holds a live broker connection. Its
        attributes only, no I/O: while the consumer reconnects its
        ``connection`` is None (Celery's Connection bootstep)."""
        if self.consumer is None:
            return True  # started by hand, without a consumer to ask
        connection = getattr(self.consumer, "connection", None)
        return connection is not None and bool(connection.connected)

    def report_alive(self) -> None:
        # A worker cut off from the broker takes no task: it is not reported,
        # and the About page counts it gone after three missed reports.
        if not self.consuming():
            self.not_reported = "cut off from the broker"
            if not self.said_disconnected:
                logger.warning("workers: not reporting this worker alive while it cannot reach the broker")
                self.said_disconnected = True
            return
        self.said_disconnected = False
        self.mark_in_layer()
        try:
            workers.report_alive(self.worker_id, name=self.worker_name, pid=os.getpid(), concurrency=self.concurrency)
        except Exception as exc:
            self.not_reported = (
                "cannot reach the database"
                if isinstance(exc, db.DATABASE_DOWN)
                else f"its report to the database failed: {type(exc).__name__}"
            )
            logger.warning("workers: could not report this worker alive, will try again: %s", exc)
            return
        self.reported_at = time.monotonic()
        self.not_reported = None

    def mark_in_layer(self) -> None:
        """This worker's mark in its channel layer's Redis (workers.py): the
        About page tells a web process that listens elsewhere. Redis away:
        said once; the worker runs tasks all the same."""
        if not workers.layer_marked():
            return
        try:
            workers.mark_in_layer(self.worker_id)
        except Exception as exc:
            if not self.said_unmarked:
                logger.warning("workers: could not mark this worker in its channel layer's Redis (will retry): %s", exc)
                self.said_unmarked = True
            return
        self.said_unmarked = False

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        """Ready while this worker's last round reported it to the database,
        less than MISSED_REPORTS rounds ago: what the About page counts as a
        running worker. A round stuck in a query that never returns (a
        connection cut without a reset) ages out."""
        if self.not_reported is not None:
            return False, self.not_reported
        assert self.reported_at is not None
        silent = (time.monotonic() if now is None else now) - self.reported_at
        if silent > workers.MISSED_REPORTS * settings.RELAY_INTERVAL_SECONDS:
            return False, f"no report to the database for {silent:.0f} s: its last round has not ended"
        return True, f"reported to the database {silent:.0f} s ago"

    def send_again_what_a_stopped_worker_took(self) -> None:
        try:
            queued = services.send_again(_queued_at_start)
            running = services.send_again(_running_at_start, again=True)
            logger.warning("relay: sent again %d queued and %d running task(s) a stopped worker held", queued, running)
        except Exception as exc:
            logger.warning("relay: tasks a stopped worker held not sent again (the next start will): %s", exc)


class Cleaned(NamedTuple):
    """How many rows one cleanup deleted, of each kind."""

    events: int
    idempotency_keys: int
    sessions: int
    broker_messages: int
    worker_reports: int

    def __str__(self) -> str:
        return (
            f"{self.events} expired event(s), {self.idempotency_keys} idempotency key(s), "
            f"{self.sessions} expired session(s), {self.broker_messages} delivered broker message(s) "
            f"and {self.worker_reports} worker report(s) unseen for a day"
        )


def cleanup() -> Cleaned:
    """Deletes what Tasklight keeps only for a while, once it has expired:
    events, idempotency keys, sessions, the embedded broker's delivered
    messages, and the reports of workers killed a day ago (docs/operations.md,
    "What Tasklight keeps, and for how long")."""
    return Cleaned(
        events=delete_expired_events(),
        idempotency_keys=services.delete_expired_idempotency_keys(),
        sessions=delete_expired_sessions(),
        broker_messages=delete_delivered_messages(),
        worker_reports=workers.forget_unseen(),
    )


_housekeeper: Housekeeper | None = None
# How long a stopping worker waits for its housekeeper's round to end.
HOUSEKEEPER_STOP_SECONDS = 3.0
# Found as the worker starts, sent again by its housekeeper.
_queued_at_start: list[tuple[Any, str]] = []
_running_at_start: list[tuple[Any, str]] = []


@worker_init.connect
def find_tasks_a_stopped_worker_took(**kwargs: Any) -> None:
    """On a broker that never delivers a message again
    (RESEND_ABANDONED_TASKS), a worker that stopped took with it the
    messages it held: those of its running tasks and of queued ones it was
    to retry later. Before this worker consumes, they are the sent tasks
    still queued or running whose messages no longer wait in the broker
    (read in this order, a task sent meanwhile is waiting). The running
    ones go as redeliveries, taken over once their lease has lapsed: the
    relay's resend_abandoned would wait three leases. Assumes no other worker
    consumes from the same broker (make run); if one does, a task it holds
    is sent twice and still runs once, and a task it runs keeps its lease."""
    if not settings.RESEND_ABANDONED_TASKS:
        return
    try:
        queued, running = services.sent_queued_tasks(), services.running_tasks()
        waiting = waiting_task_ids()
    except Exception as exc:
        logger.warning("relay: could not look for tasks a stopped worker took with it: %s", exc)
        return
    finally:
        connection.close()  # the pool processes, forked after this, must not inherit it
    _queued_at_start[:] = [(task_id, kind) for task_id, kind in queued if str(task_id) not in waiting]
    _running_at_start[:] = [(task_id, kind) for task_id, kind in running if str(task_id) not in waiting]


@worker_ready.connect
def start_housekeeper(sender: Any = None, **kwargs: Any) -> None:
    """``sender`` is the worker's consumer: its node name, and its pool's size."""
    global _housekeeper
    _housekeeper = Housekeeper(
        name=getattr(sender, "hostname", "") or socket.gethostname(),
        concurrency=int(getattr(getattr(sender, "controller", None), "concurrency", 0) or 1),
        consumer=sender,
    )
    _housekeeper.start()


@inspect_command()
def worker_readiness(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Whether this worker can run tasks now: asked over the broker by
    ``manage.py worker_ready`` (docs/operations.md, "Health"). Answered from
    the housekeeper's last round, without a query: the main process that
    answers forks pool processes, which must not inherit a connection."""
    if _housekeeper is None:
        return {"ready": False, "detail": "starting: its housekeeper has not started yet"}
    if not _housekeeper.is_alive():
        return {"ready": False, "detail": "its housekeeper has stopped"}
    ready, detail = _housekeeper.readiness()
    return {"ready": ready, "detail": detail}


@worker_shutdown.connect
def stop_housekeeper(**kwargs: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stopping.set()
        # It reports the worker gone as it ends (a round under way finishes first).
        _housekeeper.join(timeout=HOUSEKEEPER_STOP_SECONDS)
    PoolDeaths.stop_in_this_process(timeout=HOUSEKEEPER_STOP_SECONDS)
