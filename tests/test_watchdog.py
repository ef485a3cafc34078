"""The cancel watchdog of a pool process (workloads/tasks.py), alone: one
thread follows each task its process runs, renewing the lease and passing
on the owner's cancel request. Killing a task that ignores its cancellation
is tested on real workers (tests/test_lifecycle.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from workloads import services
from workloads.models import Task, TaskStatus
from workloads.tasks import CancelWatchdog

from .stack import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def watchdog(settings: Any) -> Iterator[CancelWatchdog]:
    settings.CANCEL_POLL_SECONDS = 0.05
    settings.CANCEL_GRACE_SECONDS = 600  # never reached: each task is unwatched first
    watchdog = CancelWatchdog()
    watchdog.start()
    yield watchdog
    watchdog.stop()
    assert not watchdog.is_alive()


def running_task(owner: User) -> Task:
    long_ago = timezone.now() - timezone.timedelta(minutes=1)
    return Task.objects.create(
        owner=owner,
        kind="simulate",
        params={"seconds": 60},
        status=TaskStatus.RUNNING,
        started_at=long_ago,
        heartbeat_at=long_ago,
    )


def watched_past_its_first_poll(owner: User, watchdog: CancelWatchdog) -> tuple[Task, threading.Event]:
    """A running task the watchdog follows, once it has renewed its lease."""
    task = running_task(owner)
    cancel = threading.Event()
    watchdog.watch(str(task.id), cancel)
    wait_for(
        lambda: Task.objects.get(pk=task.pk).heartbeat_at > task.heartbeat_at,
        timeout=10,
        what="the watchdog's first poll",
    )
    return task, cancel


def test_one_thread_renews_the_lease_and_passes_on_the_cancel_of_each_task_in_turn(
    alice: User, watchdog: CancelWatchdog
) -> None:
    threads_before = threading.active_count()
    for _ in range(3):
        task = running_task(alice)
        cancel = threading.Event()
        watch = watchdog.watch(str(task.id), cancel)
        wait_for(
            lambda: Task.objects.get(pk=task.pk).heartbeat_at > task.heartbeat_at,  # noqa: B023
            timeout=10,
            what="the lease renewed",
        )
        assert not cancel.is_set()
        services.cancel_task(task_id=task.id, owner=alice)
        assert cancel.wait(10), "the cancel request was not passed on"
        watchdog.unwatch(watch)
    assert threading.active_count() == threads_before
    assert watchdog.is_alive()


def test_a_task_unwatched_before_its_first_poll_is_not_touched(alice: User, watchdog: CancelWatchdog) -> None:
    first, second = running_task(alice), running_task(alice)
    watchdog.unwatch(watchdog.watch(str(first.id), threading.Event()))
    # The next task's lease renewed shows the thread went past the first one.
    watchdog.watch(str(second.id), threading.Event())
    wait_for(
        lambda: Task.objects.get(pk=second.pk).heartbeat_at > second.heartbeat_at,
        timeout=10,
        what="the second task's lease renewed",
    )
    assert Task.objects.get(pk=first.pk).heartbeat_at == first.heartbeat_at


def test_a_broken_database_connection_does_not_end_the_watch(alice: User, watchdog: CancelWatchdog) -> None:
    """PostgreSQL restarted, or the watchdog's backend ended: it follows the
    task on a new connection. It gave up before, so the cancel was ignored
    and the lease lapsed while the task ran (then another worker ran it too)."""
    task, cancel = watched_past_its_first_poll(alice, watchdog)
    with connection.cursor() as cursor:  # this process's other connections: the watchdog's
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = current_setting('application_name') AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchall(), "no connection of the watchdog's to end"
    renewed = Task.objects.get(pk=task.pk).heartbeat_at
    wait_for(
        lambda: Task.objects.get(pk=task.pk).heartbeat_at > renewed,
        timeout=10,
        what="the lease renewed on a new connection",
    )
    Task.objects.filter(pk=task.pk).update(cancel_requested_at=timezone.now())  # as cancel_task does
    assert cancel.wait(10), "the cancel request was not passed on"


def test_a_task_deleted_with_its_owners_account_is_told_to_stop(alice: User, watchdog: CancelWatchdog) -> None:
    """Deleting a user deletes their tasks; one running went on to its end
    (a `simulate` of an hour held its pool process for an hour), since its
    lease found no row to renew and no cancel in it."""
    task, cancel = watched_past_its_first_poll(alice, watchdog)
    assert not cancel.is_set()
    alice.delete()
    assert not Task.objects.filter(pk=task.pk).exists()
    assert cancel.wait(10), "the task was not told to stop"
