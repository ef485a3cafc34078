"""RabbitMQ blocking publishers (a memory or disk alarm): a task counts as
sent only once RabbitMQ has confirmed it, so none is lost when RabbitMQ is
restarted before it takes messages again. These raise a real memory alarm
on this machine's RabbitMQ (its watermark set to 1 byte) and restart it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from workloads.models import Task

from .stack import Account, until_all_finished, wait_for
from .test_faults import assert_each_ran_once, rabbitmq

pytestmark = [pytest.mark.stack, pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def rabbitmq_alarms() -> bool:
    """Whether RabbitMQ has a resource alarm on (check_alarms fails then)."""
    checked = subprocess.run(["rabbitmq-diagnostics", "-q", "check_alarms"], capture_output=True, timeout=60)
    return checked.returncode != 0


def memory_watermark() -> list[str]:
    """RabbitMQ's memory watermark, as set_vm_memory_high_watermark takes it."""
    shown = subprocess.run(
        ["rabbitmqctl", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    absolute = re.fullmatch(r"\{absolute,\s*(\d+)\}", shown)
    return ["absolute", absolute.group(1)] if absolute else [str(float(shown))]


@contextmanager
def rabbitmq_blocking_publishers() -> Iterator[None]:
    """A memory alarm for the block: RabbitMQ stops reading from every
    connection that publishes (it confirms nothing); consumers go on. The
    watermark is set back after, its app started first if a test stopped it."""
    watermark = memory_watermark()
    subprocess.run(["rabbitmqctl", "set_vm_memory_high_watermark", "absolute", "1"], check=True, capture_output=True)
    try:
        wait_for(rabbitmq_alarms, timeout=30, what="RabbitMQ's memory alarm")
        yield
    finally:
        rabbitmq("start_app")  # a no-op if it runs
        subprocess.run(["rabbitmqctl", "set_vm_memory_high_watermark", *watermark], check=True, capture_output=True)
        wait_for(lambda: not rabbitmq_alarms(), timeout=30, what="RabbitMQ's memory alarm to clear")


def sent(task_ids: list[str]) -> set[str]:
    """The tasks among these that count as sent to the broker (sent_at)."""
    connection.close()  # the test's own connection may not have survived a restart
    return {str(pk) for pk in Task.objects.filter(pk__in=task_ids, sent_at__isnull=False).values_list("pk", flat=True)}


def test_tasks_queued_while_rabbitmq_blocks_publishers_run_once_after_it_restarts(private_stack) -> None:
    running = private_stack()
    running.start_worker(concurrency=2)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        # The web process's broker connection is made, and confirmed a message, before the alarm.
        before = alice.queue("simulate", seconds=0)
        socket.events_until(until_all_finished([before["id"]]))
        # Marked sent in a batch, shortly after (workloads/sent_marks.py).
        wait_for(lambda: sent([before["id"]]) == {before["id"]}, timeout=10, what="the first task to count as sent")
        with rabbitmq_blocking_publishers():
            # Still accepted: the broker not taking messages is no reason to refuse work.
            during = [alice.queue("simulate", seconds=0)["id"] for _ in range(3)]
            # An operator frees the disk and restarts RabbitMQ before its alarm clears.
            # A publish merely written to the connection's socket was lost here,
            # and its task, counted as sent, stayed queued for good.
            rabbitmq("stop_app")
            rabbitmq("start_app")
            assert sent(during) == set(), "RabbitMQ confirmed nothing: no task counts as sent"
        socket.events_until(until_all_finished(during), timeout=120)
    assert_each_ran_once(during)
    web_log = running.web.log()
    assert "the broker did not answer within 2 s" in web_log, web_log[-3000:]
    # The first POST waited out the confirm; the rest were left to the relay at once.
    assert web_log.count("the broker did not answer within") == 1, web_log[-3000:]


def test_a_capped_task_that_rabbitmq_will_not_take_back_is_left_to_the_relay(private_stack) -> None:
    """A task whose owner has MAX_RUNNING_TASKS_PER_USER running goes back to
    the queue every second or two. When RabbitMQ would not take it back, its
    message was acknowledged all the same and the task, counted as sent,
    stayed queued for good: now it is marked unsent, for the relay."""
    running = private_stack(MAX_RUNNING_TASKS_PER_USER="1")
    running.start_worker(concurrency=2, MAX_RUNNING_TASKS_PER_USER="1")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        long = alice.queue("simulate", seconds=150)["id"]
        socket.events_until(lambda f: f["event"] == "task.started" and f["task"]["id"] == long)
        capped = alice.queue("simulate", seconds=0)["id"]
        wait_for(lambda: sent([capped]) == {capped}, timeout=30, what="the capped task to count as sent")
        with rabbitmq_blocking_publishers():
            wait_for(lambda: sent([capped]) == set(), timeout=60, what="the capped task to be left to the relay")
            rabbitmq("stop_app")
            rabbitmq("start_app")
        cancelled = alice.http.post(f"/api/tasks/{long}/cancel/")
        assert cancelled.status_code == 202, cancelled.text
        socket.events_until(until_all_finished([long, capped]), timeout=120)
    connection.close()
    assert Task.objects.get(pk=long).status == "cancelled"
    assert_each_ran_once([capped])
    worker_log = running.workers[0].log()
    assert f"task {capped}: left to the relay" in worker_log, worker_log[-3000:]
