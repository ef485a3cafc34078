"""Many machines: two web processes and two workers, each started from the
Procfile's line. Tasks queued on one web process are shared by both workers
and announced to a socket on the other web process."""

from __future__ import annotations

import re
import uuid

import pytest

from .stack import Account, until_all_finished, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

TASKS = 12
# Long enough that one worker cannot drain the queue before the other takes
# its first task (prefetch 1, concurrency 1 each).
SECONDS = 0.3
TERMINAL = ("task.succeeded", "task.failed", "task.cancelled")


def test_tasks_queued_on_one_web_process_run_on_both_workers_and_reach_the_other(private_stack) -> None:
    # A channel-layer prefix of their own: nothing of the session's stack
    # mixes with these processes (the queue is private_stack's own already).
    private = {
        "CHANNEL_LAYER_PREFIX": f"tl-scale-{uuid.uuid4().hex[:8]}",
        # No task waits for a free slot of its owner: that would send it
        # through the queue again, to either worker, and blur who ran it.
        "MAX_RUNNING_TASKS_PER_USER": str(TASKS),
    }
    web1 = private_stack(**private)
    web2 = private_stack(**private)
    assert web1.base_url != web2.base_url
    workers = [web1.start_worker(concurrency=1, **private) for _ in range(2)]
    names = {worker_name(worker.log()) for worker in workers}
    assert len(names) == 2, names

    alice = Account.sign_up(web1.base_url)
    with alice.socket(web2.base_url) as socket:
        task_ids = [alice.queue("simulate", seconds=SECONDS)["id"] for _ in range(TASKS)]
        events = socket.events_until(until_all_finished(task_ids), timeout=60)

    ended = {event["task"]["id"]: event["event"] for event in events if event["event"] in TERMINAL}
    assert ended == dict.fromkeys(task_ids, "task.succeeded"), ended

    def ran_by(task_id: str) -> list[str]:
        return [worker.name for worker in workers if f"run_task[{task_id}] succeeded" in worker.log()]

    runners = {}
    for task_id in task_ids:
        # A worker logs the task's end just after its event left: wait for the line.
        runners[task_id] = wait_for(lambda: ran_by(task_id), timeout=10, what=f"a worker's log line for {task_id}")  # noqa: B023
    assert all(len(names) == 1 for names in runners.values()), f"a task ran twice: {runners}"
    counts = {worker.name: sum(names == [worker.name] for names in runners.values()) for worker in workers}
    assert all(count > 0 for count in counts.values()), f"one worker ran everything: {counts}"


def worker_name(log: str) -> str:
    """The node name a worker announced at start-up (celery@host, from --hostname)."""
    match = re.search(r"(\S+@\S+) v\d", log) or re.search(r"(\S+@\S+) ready\.", log)
    assert match, log
    return match.group(1)
