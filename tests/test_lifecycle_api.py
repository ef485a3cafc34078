"""Cancel, retry, idempotency and rate limits through the HTTP API
(in-process; the worker's side is in test_lifecycle.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from live.models import Event
from tasklight import rate_limits
from workloads.models import Task, TaskStatus

from .test_auth_api import assert_error
from .test_tasks_api import queue

pytestmark = pytest.mark.django_db


def finish(task_id: str, status: str = TaskStatus.SUCCEEDED) -> None:
    Task.objects.filter(pk=task_id).update(status=status, finished_at=timezone.now())


def test_cancelling_a_queued_task_ends_it_at_once(alice_api: APIClient, alice: User) -> None:
    task = queue(alice_api).json()
    response = alice_api.post(f"/api/tasks/{task['id']}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"] == "Cancelled before it started."
    assert Task.objects.get(pk=task["id"]).status == "cancelled"
    assert list(Event.objects.filter(user=alice).values_list("kind", flat=True).order_by("sequence")) == [
        "task.queued",
        "task.cancelled",
    ]


def test_cancelling_a_running_task_asks_the_worker_to_stop_it(alice_api: APIClient) -> None:
    task = queue(alice_api).json()
    Task.objects.filter(pk=task["id"]).update(status=TaskStatus.RUNNING, started_at=timezone.now())
    response = alice_api.post(f"/api/tasks/{task['id']}/cancel/")
    assert (response.status_code, response.json()["status"]) == (202, "running")
    assert Task.objects.get(pk=task["id"]).cancel_requested_at is not None
    # Asking twice is harmless.
    assert alice_api.post(f"/api/tasks/{task['id']}/cancel/").status_code == 202


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_task_is_a_409(alice_api: APIClient, status: str) -> None:
    task = queue(alice_api).json()
    finish(task["id"], status)
    assert_error(alice_api.post(f"/api/tasks/{task['id']}/cancel/"), 409, "conflict")
    assert Task.objects.get(pk=task["id"]).status == status


def test_nobody_cancels_or_retries_another_users_task(alice_api: APIClient, bob_api: APIClient) -> None:
    task = queue(alice_api).json()
    assert_error(bob_api.post(f"/api/tasks/{task['id']}/cancel/"), 404, "not_found")
    finish(task["id"])
    assert_error(bob_api.post(f"/api/tasks/{task['id']}/retry/"), 404, "not_found")
    assert_error(bob_api.post(f"/api/tasks/{uuid.uuid4()}/cancel/"), 404, "not_found")
    assert Task.objects.count() == 1


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_retry_queues_a_copy_as_a_new_task(alice_api: APIClient, status: str) -> None:
    original = queue(alice_api, "primes", below=1000).json()
    finish(original["id"], status)
    response = alice_api.post(f"/api/tasks/{original['id']}/retry/")
    assert response.status_code == 202
    copy = response.json()
    assert copy["id"] != original["id"]
    assert (copy["kind"], copy["params"], copy["status"]) == ("primes", {"below": 1000}, "queued")
    assert response["Location"] == f"/api/tasks/{copy['id']}/"
    assert str(Task.objects.get(pk=copy["id"]).retry_of_id) == original["id"]


def test_retry_of_an_unfinished_task_is_a_409(alice_api: APIClient) -> None:
    task = queue(alice_api).json()
    assert_error(alice_api.post(f"/api/tasks/{task['id']}/retry/"), 409, "conflict")
    assert Task.objects.count() == 1


def test_the_same_idempotency_key_gives_the_same_task(alice_api: APIClient) -> None:
    first = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert Task.objects.count() == 1
    other = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert other.json()["id"] != first.json()["id"]


def test_the_same_key_with_another_body_is_a_422(alice_api: APIClient) -> None:
    alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    response = alice_api.post(
        "/api/tasks/", {"kind": "simulate", "params": {"seconds": 9}}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert_error(response, 422, "idempotency_mismatch")
    assert Task.objects.count() == 1


def test_another_users_identical_key_is_independent(alice_api: APIClient, bob_api: APIClient) -> None:
    alices = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    bobs = bob_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert alices.json()["id"] != bobs.json()["id"]
    assert Task.objects.count() == 2


def test_a_key_older_than_a_day_starts_afresh(alice_api: APIClient) -> None:
    from workloads.models import IdempotencyKey

    first = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    later = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert later.json()["id"] != first.json()["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_a_malformed_idempotency_key_is_a_400(alice_api: APIClient, key: str) -> None:
    response = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert_error(response, 400, "invalid")
    assert not Task.objects.exists()


def test_queueing_too_fast_is_a_429_with_retry_after(alice_api: APIClient, bob_api: APIClient, settings) -> None:
    settings.TASK_RATE_LIMIT = "3/min"
    for user in User.objects.all():  # an earlier run's users had the same ids
        rate_limits.clear("queue", user.pk, settings.TASK_RATE_LIMIT)
    assert [queue(alice_api).status_code for _ in range(3)] == [202, 202, 202]
    response = queue(alice_api)
    assert_error(response, 429, "throttled")
    assert 0 < int(response["Retry-After"]) <= 60
    assert Task.objects.filter(owner__username="alice").count() == 3
    # Reading is not limited, and bob has a budget of his own.
    assert alice_api.get("/api/tasks/").status_code == 200
    assert queue(bob_api).status_code == 202


def test_a_repeat_of_a_used_idempotency_key_is_answered_past_the_limit(alice_api: APIClient, settings) -> None:
    """DESIGN §4: a repeat answers 202 with the same task. A client repeats a
    POST whose answer it lost; being at the limit must not turn that into a
    429, since the repeat queues nothing. A new key is still refused."""
    settings.TASK_RATE_LIMIT = "2/min"
    for user in User.objects.all():
        rate_limits.clear("queue", user.pk, settings.TASK_RATE_LIMIT)
    first = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="lost")
    assert queue(alice_api).status_code == 202
    assert_error(queue(alice_api), 429, "throttled")
    again = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="lost")
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    changed = alice_api.post(
        "/api/tasks/", {"kind": "simulate", "params": {"seconds": 9}}, format="json", HTTP_IDEMPOTENCY_KEY="lost"
    )
    assert_error(changed, 422, "idempotency_mismatch")
    fresh = alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="new")
    assert_error(fresh, 429, "throttled")
    assert Task.objects.filter(owner__username="alice").count() == 2


def test_deactivating_a_user_stops_their_work(
    alice: User, bob: User, alice_api: APIClient, bob_api: APIClient, django_capture_on_commit_callbacks
) -> None:
    """A deactivated account's queued tasks started all the same, one after
    another as its cap allowed: they are cancelled now, and its running
    ones asked to stop, as the owner's own cancel does. Others' untouched."""
    waiting = queue(alice_api).json()["id"]
    running = queue(alice_api).json()["id"]
    Task.objects.filter(pk=running).update(status=TaskStatus.RUNNING, started_at=timezone.now())
    others = queue(bob_api).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        alice.is_active = False
        alice.save()  # as the admin's user page does
    assert Task.objects.get(pk=waiting).status == TaskStatus.CANCELLED
    stopping = Task.objects.get(pk=running)
    assert stopping.status == TaskStatus.RUNNING and stopping.cancel_requested_at is not None
    assert Task.objects.get(pk=others).status == TaskStatus.QUEUED
    assert list(Event.objects.filter(task__id=waiting).values_list("kind", flat=True).order_by("sequence")) == [
        "task.queued",
        "task.cancelled",
    ]


@pytest.mark.django_db(transaction=True)  # the owner's foreign key is checked at commit
@pytest.mark.parametrize("key", [None, "k-1"])
def test_queueing_for_an_account_deleted_meanwhile_is_a_401_not_a_500(alice: User, key: str | None) -> None:
    """A request whose credentials were read just before its account was
    deleted: the task's insert failed on the missing owner (a 500)."""
    api = APIClient()
    api.force_authenticate(user=alice)  # the user as read before the deletion
    User.objects.filter(pk=alice.pk).delete()
    headers: dict[str, Any] = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = api.post("/api/tasks/", {"kind": "simulate"}, format="json", **headers)
    assert_error(response, 401)
    assert not Task.objects.exists()
