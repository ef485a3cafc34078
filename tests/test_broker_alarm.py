"""RabbitMQ blocking publishers (a memory or disk alarm): a task sent (by
a POST, the relay, a resend) counts as sent only once RabbitMQ has
confirmed it, so none is lost when RabbitMQ is restarted before it takes
messages again. These raise a real memory alarm on this machine's RabbitMQ
(its watermark set to 1 byte) and restart it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from workloads.models import Task

from .proxy import TcpProxy
from .stack import Account, until_all_finished, wait_for
from .test_faults import assert_each_ran_once, rabbitmq
from .test_workers import database_address

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


def block_publishers() -> None:
    """A memory alarm: RabbitMQ stops reading from every connection that
    publishes (it confirms nothing); consumers go on. Until its app restarts,
    which reads its configured watermark again."""
    subprocess.run(["rabbitmqctl", "set_vm_memory_high_watermark", "absolute", "1"], check=True, capture_output=True)
    wait_for(rabbitmq_alarms, timeout=30, what="RabbitMQ's memory alarm")


@contextmanager
def rabbitmq_blocking_publishers() -> Iterator[None]:
    """A memory alarm for the block; the watermark is set back after, its
    app started first if a test stopped it."""
    watermark = memory_watermark()
    try:
        block_publishers()
        yield
    finally:
        rabbitmq("start_app")  # a no-op if it runs
        subprocess.run(["rabbitmqctl", "set_vm_memory_high_watermark", *watermark], check=True, capture_output=True)
        wait_for(lambda: not rabbitmq_alarms(), timeout=30, what="RabbitMQ's memory alarm to clear")


def sent(task_ids: list[str]) -> set[str]:
    """The tasks among these that count as sent to the broker (sent_at)."""
    connection.close()  # the test's own connection may not have survived a restart
    return {str(pk) for pk in Task.objects.filter(pk__in=task_ids, sent_at__isnull=False).values_list("pk", flat=True)}


TIMED_OUT = "the broker did not answer within 2 s"


def test_a_task_posted_while_rabbitmq_blocks_publishers_runs_once_after_it_restarts(stack, private_stack) -> None:
    """A POST's task is sent after the answer, and counts as sent only once
    RabbitMQ confirmed it: one RabbitMQ withholds stays unsent, and so do
    the relays' sends of it. Before, the POST's send counted once written
    to its connection, and a restart under the alarm lost it: the task, its
    sent_at set, stayed queued for good. Every worker on the database
    relays, the shared stack's too."""
    running = private_stack()
    worker = running.start_worker(concurrency=2)
    relays = [worker, *stack.workers]
    timed_out_before = sum(relay.log().count(TIMED_OUT) for relay in relays)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        with rabbitmq_blocking_publishers():
            task = alice.queue("simulate", seconds=0)["id"]
            wait_for(lambda: TIMED_OUT in running.web.log(), timeout=30, what="the POST's send to time out")
            # RELAY_MIN_AGE_SECONDS later, the relays try, and wait in vain too.
            wait_for(
                lambda: sum(relay.log().count(TIMED_OUT) for relay in relays) > timed_out_before,
                timeout=60,
                what="a relay's send to time out",
            )
            # Checked before the restart: once RabbitMQ runs again without its alarm, a
            # relay's next send is confirmed and rightly marks the task sent.
            assert sent([task]) == set(), "RabbitMQ confirmed nothing: the task does not count as sent"
            # An operator frees the memory and restarts RabbitMQ before its alarm clears:
            # what its connections held is lost, and none of it was counted.
            rabbitmq("stop_app")
            rabbitmq("start_app")
        socket.events_until(until_all_finished([task]), timeout=120)
    assert_each_ran_once([task])


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


def test_a_run_the_database_cut_short_while_rabbitmq_blocks_publishers_still_ends(private_stack) -> None:
    """A run that the database cut short is retried later: a new message (Celery's
    retry), and this one acknowledged. That new message went unconfirmed: with
    RabbitMQ blocking publishers, a restart lost it, and the task, running with
    no message left anywhere, stayed running for good. Now the message is
    acknowledged only once RabbitMQ has confirmed its retry; until then it goes
    back to the queue as it is."""
    running = private_stack()
    with TcpProxy(*database_address()) as proxy:
        worker = running.start_worker(concurrency=1, DATABASE_URL=proxy.url_for(running.worker_env["DATABASE_URL"]))
        alice = Account.sign_up(running.base_url)
        with alice.socket() as socket:
            task = alice.queue("simulate", seconds=3)["id"]
            socket.events_until(lambda f: f["event"] == "task.started" and f["task"]["id"] == task)
            with rabbitmq_blocking_publishers():
                proxy.pause()  # every connection reset: the run cannot write its end
                # The retry sent (before: Celery's trace says so once the send is
                # written) or, now, not confirmed within BROKER_PUBLISH_TIMEOUT.
                wait_for(
                    lambda: any(
                        said in worker.log() for said in ("retry: Retry in", f"task {task}: its retry not sent")
                    ),
                    timeout=30,
                    what="the run to be cut short and its retry sent or given up",
                )
                # What RabbitMQ's connections held is lost; what it confirmed, or never
                # had acknowledged, is not.
                rabbitmq("stop_app")
                rabbitmq("start_app")
            proxy.resume()
            socket.events_until(until_all_finished([task]), timeout=120)
    assert_each_ran_once([task])
