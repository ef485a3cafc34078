"""``sent_at`` is written in batches after the broker accepted a task
(workloads/sent_marks.py), not in the request; the relay relies on it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from workloads.models import Task
from workloads.sent_marks import SentMarks

from .stack import fork_holding, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_queued_task_is_marked_sent_soon_after_its_request(alice_api: APIClient) -> None:
    # Sent by the outbox thread after the answer, marked once RabbitMQ confirmed it.
    response = alice_api.post("/api/tasks/", {"kind": "simulate", "params": {"seconds": 0}}, format="json")
    assert response.status_code == 202
    task_id = response.json()["id"]
    wait_for(
        lambda: Task.objects.filter(pk=task_id, sent_at__isnull=False).exists(),
        timeout=10,
        what="the task's sent_at",
    )


def test_marks_added_together_are_all_written(alice: User) -> None:
    tasks = [Task.objects.create(owner=alice, kind="simulate", params={"seconds": 0}) for _ in range(5)]
    marks = SentMarks()
    for task in tasks:
        marks.add(task.id)
    wait_for(
        lambda: Task.objects.filter(pk__in=[task.id for task in tasks], sent_at__isnull=False).count() == 5,
        timeout=10,
        what="all five marks",
    )
    assert marks.flush() == 0  # nothing left behind


def test_a_mark_never_moves_an_earlier_one(alice: User) -> None:
    task = Task.objects.create(owner=alice, kind="simulate", params={"seconds": 0})
    marks = SentMarks()
    marks.add(task.id)
    first = wait_for(
        lambda: Task.objects.filter(pk=task.pk).values_list("sent_at", flat=True).first(),
        timeout=10,
        what="the first mark",
    )
    marks.add(task.id)  # sent again (a relay's second try, say)
    wait_for(lambda: marks.flush() == 0, timeout=10, what="the second mark to be written")
    assert Task.objects.get(pk=task.pk).sent_at == first


def test_a_process_forked_while_a_thread_held_the_marks_lock_still_marks() -> None:
    # Before, a fork while a thread of the parent held the lock left it held
    # in the new process (a pool process), which hung at its first mark.
    seen = fork_holding(
        "sent_marks._lock",
        # The parent's own mark: the parent's to write, not the child's.
        setup="import uuid\nfrom workloads.sent_marks import sent_marks\nsent_marks.add(uuid.uuid4())",
        child="inherited = len(sent_marks._items)\nsent_marks.add(uuid.uuid4())\nos._exit(10 + inherited)",
    )
    assert seen == {"ended": True, "exit_code": 10}  # it marked, with no mark of its parent's
