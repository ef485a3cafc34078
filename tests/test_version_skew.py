"""Web processes and workers that disagree about the workloads, as during a
rolling deploy (two releases side by side) or with WORKLOAD_MODULES that
differ: a worker that cannot run a task hands it back to the queue for
another worker, and the task fails, saying why, only when none took it
within TASK_SKEW_WAIT_SECONDS (docs/operations.md#version-skew-between-web-and-workers).

tests/skew_old.py and tests/skew_new.py are two releases of one workload,
``versioned``: the newer one has a parameter more, which the older one's
model (extra="forbid") refuses."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from workloads.models import Task

from .stack import Account, free_port, terminal_for, wait_for
from .test_lifecycle import kinds_for
from .test_metrics import sample

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

HANDED_BACK = "handed back to the queue for another worker"


def test_a_worker_without_the_workload_hands_the_task_to_a_worker_that_has_it(private_stack: Any) -> None:
    running = private_stack(WORKLOAD_MODULES="tests.workloads_for_tests")
    lacking = running.start_worker(concurrency=1, WORKLOAD_MODULES="")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("reverse", text="skew")
        # Only the worker without the workload is up: it must not fail the task.
        wait_for(lambda: HANDED_BACK in lacking.log(), timeout=20, what="the hand-back line")
        assert "no workload named 'reverse' is installed on this worker" in lacking.log()
        running.start_worker(concurrency=1)
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.succeeded", events[-1]
    assert events[-1]["task"]["result"] == {"reversed": "weks"}
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]
    assert Task.objects.get(pk=task["id"]).starts == 1


def test_a_task_no_worker_can_run_fails_after_the_wait_naming_why(private_stack: Any) -> None:
    running = private_stack(WORKLOAD_MODULES="tests.workloads_for_tests")
    worker_port = free_port()
    lacking = running.start_worker(
        concurrency=1, WORKLOAD_MODULES="", TASK_SKEW_WAIT_SECONDS="3", WORKER_METRICS_PORT=str(worker_port)
    )
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("reverse", text="skew")
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    error = events[-1]["task"]["error"]
    assert events[-1]["event"] == "task.failed", events[-1]
    assert error.startswith("No worker could run this task: no workload named 'reverse' is installed on this worker")
    assert "within 3 s" in error
    # It never started: no worker ran it, and its owner was told once.
    assert kinds_for(task["id"]) == ["task.queued", "task.failed"]
    assert Task.objects.get(pk=task["id"]).started_at is None
    log = lacking.log()
    # The operator: a warning per hand-back, the waits growing, and one error at the end.
    waits = [float(wait) for wait in re.findall(r"time \d+, in ([\d.]+) s", log)]
    assert 2 <= len(waits) <= 4, log[-3000:]
    assert waits == sorted(waits), waits
    assert len(re.findall(r'"level": "ERROR".*no worker could run it', log)) == 1, log[-3000:]

    def handed_back() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).text
        return sample(text, "tasklight_tasks_handed_back_total", kind="reverse", reason="workload_missing")

    assert wait_for(handed_back, timeout=10, what="the hand-back counter") == len(waits)


def test_an_older_worker_hands_back_parameters_it_does_not_know_to_a_newer_one(private_stack: Any) -> None:
    # The web process is of the new release: it stores every parameter of
    # the new model, "shout" included, though the client did not send it.
    running = private_stack(WORKLOAD_MODULES="tests.skew_new")
    old = running.start_worker(concurrency=1, WORKLOAD_MODULES="tests.skew_old")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("versioned", text="hi")
        assert task["params"] == {"text": "hi", "shout": False}
        wait_for(lambda: HANDED_BACK in old.log(), timeout=20, what="the hand-back line")
        assert "this worker's version of 'versioned' refuses its parameters (shout: Extra inputs" in old.log()
        running.start_worker(concurrency=1, WORKLOAD_MODULES="tests.skew_new")
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.succeeded", events[-1]
    assert events[-1]["task"]["result"] == {"text": "hi", "version": "new"}
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]


def test_parameters_no_worker_accepts_fail_readably_and_the_worker_logs_no_traceback(private_stack: Any) -> None:
    running = private_stack(WORKLOAD_MODULES="tests.skew_new")
    old = running.start_worker(concurrency=1, WORKLOAD_MODULES="tests.skew_old", TASK_SKEW_WAIT_SECONDS="0")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("versioned", text="hi", shout=True)
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.failed", events[-1]
    assert events[-1]["task"]["error"] == (
        "No worker could run this task: this worker's version of 'versioned' refuses its parameters "
        "(shout: Extra inputs are not permitted). The web process that accepted it and the workers differ "
        "in their workloads (a deployment under way, or WORKLOAD_MODULES that differ): queue it again once "
        "they agree."
    )
    assert kinds_for(task["id"]) == ["task.queued", "task.failed"]
    assert "Traceback" not in old.log()


def test_a_message_with_an_argument_of_a_later_release_still_runs_its_task(stack: Any) -> None:
    """A web process of a later release may send run_task an argument this
    release does not know: the worker runs the task, ignoring it. Before,
    the call raised TypeError, Celery acknowledged the message, and the
    task stayed queued for good."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from tasklight.celery import app

    alice = Account.sign_up(stack.base_url)
    # Marked sent, as the web process marks what it sends: the relay leaves it alone.
    task = Task.objects.create(
        owner=User.objects.get(username=alice.username),
        kind="reverse",
        params={"text": "later"},
        sent_at=timezone.now(),
    )
    app.send_task(
        "tasklight.run_task", args=(str(task.pk),), kwargs={"again": False, "priority": 3}, task_id=str(task.pk)
    )
    done = wait_for(
        lambda: Task.objects.filter(pk=task.pk).exclude(status__in=["queued", "running"]).first(),
        timeout=30,
        what="the task to end",
    )
    assert (done.status, done.result) == ("succeeded", {"reversed": "retal"})
