"""The event log over REST, retention, and the inbox (DESIGN.md §4 and §5)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from live import services as live_services
from live.models import Event
from live.services import delete_expired_events
from workloads import services
from workloads.models import Task

from .test_auth_api import assert_error
from .test_tasks_api import queue

pytestmark = pytest.mark.django_db


def run_to_the_end(task_id: str, outcome: str = "succeeded") -> None:
    """Drives a task through the service layer as a worker would."""
    services.start_task(task_id=task_id, redelivered=False)
    if outcome == "succeeded":
        services.finish_task(task_id=task_id, result={"ok": True})
    else:
        services.fail_task(task_id=task_id, error="broken")


def test_events_after_a_cursor_past_retention_answer_410_resync(alice_api: APIClient, alice: User) -> None:
    for _ in range(3):
        queue(alice_api)
    Event.objects.filter(user=alice, sequence__lt=3).update(created_at=timezone.now() - timedelta(days=8))
    assert delete_expired_events() == 2
    assert_error(alice_api.get("/api/events/?after=0"), 410, "resync")
    assert [e["id"] for e in alice_api.get("/api/events/?after=2").json()["results"]] == [3]


def test_an_event_committed_while_the_cursor_is_read_is_not_taken_for_expiry(
    alice_api: APIClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving of a commit between the query for events after N
    (none yet) and the read of the newest id: nothing has expired."""
    queue(alice_api)
    newest = live_services.last_event_id

    def newest_after_a_commit(user_id: int) -> int:
        monkeypatch.setattr(live_services, "last_event_id", newest)
        queue(alice_api)  # event 2 commits here
        return newest(user_id)

    monkeypatch.setattr(live_services, "last_event_id", newest_after_a_commit)
    assert [e.sequence for e in live_services.events_after(user_id=alice.pk, after=1, limit=10)] == [2]


def test_a_poller_at_the_newest_event_gets_empty_pages_and_one_beyond_it_a_400(
    alice_api: APIClient, bob_api: APIClient
) -> None:
    """A cursor beyond the newest event was never given out by this database
    (its data was reset, or the cursor is another account's): an empty page
    would let the poller skip every event up to it unseen."""
    queue(alice_api)
    queue(alice_api)
    newest = alice_api.get("/api/events/?after=0").json()["results"][-1]["id"]
    assert alice_api.get(f"/api/events/?after={newest}").json() == {"results": [], "next": None}
    error = assert_error(alice_api.get(f"/api/events/?after={newest + 1}"), 400, "invalid")
    assert error["fields"] == {"after": [f"No event {newest + 1} yet; the newest is {newest}."]}
    # Bob, with no events, is up to date at 0 and only there.
    assert bob_api.get("/api/events/?after=0").json()["results"] == []
    assert_error(bob_api.get(f"/api/events/?after={newest}"), 400, "invalid")
    # Once the events exist, the cursor is an ordinary one.
    queue(alice_api)
    assert [e["id"] for e in alice_api.get(f"/api/events/?after={newest}").json()["results"]] == [newest + 1]


@override_settings(EVENT_RETENTION_DAYS=1)
def test_retention_is_configurable(alice_api: APIClient, alice: User) -> None:
    queue(alice_api)
    Event.objects.update(created_at=timezone.now() - timedelta(hours=25))
    queue(alice_api)
    assert delete_expired_events() == 1
    assert list(Event.objects.values_list("sequence", flat=True)) == [2]


def test_the_inbox_counts_finished_tasks_until_marked_read(
    alice_api: APIClient, bob_api: APIClient, alice: User
) -> None:
    first, second = queue(alice_api).json(), queue(alice_api).json()
    run_to_the_end(first["id"])
    run_to_the_end(second["id"], "failed")
    inbox = alice_api.get("/api/notifications/").json()
    newest = live_services.last_event_id(alice.pk)
    assert (inbox["unread"], inbox["read_up_to"], inbox["last_event_id"]) == (2, 0, newest)
    assert [(n["event"], n["task"]["id"]) for n in inbox["results"]] == [
        ("task.failed", second["id"]),
        ("task.succeeded", first["id"]),
    ]
    newest_succeeded = inbox["results"][1]["id"]
    response = alice_api.post("/api/notifications/read/", {"up_to": newest_succeeded}, format="json")
    assert response.json() == {"unread": 1, "read_up_to": newest_succeeded, "last_event_id": newest}
    everything = inbox["results"][0]["id"]
    assert alice_api.post("/api/notifications/read/", {"up_to": everything}, format="json").json()["unread"] == 0
    # Marking read never goes backwards, and bob's inbox is his own.
    assert alice_api.post("/api/notifications/read/", {"up_to": 1}, format="json").json()["read_up_to"] == everything
    assert bob_api.get("/api/notifications/").json() == {
        "unread": 0,
        "read_up_to": 0,
        "last_event_id": 0,
        "results": [],
    }


def test_the_unread_count_says_up_to_which_event_it_counted(alice_api: APIClient, alice: User) -> None:
    """A count and the newest id are read at one point of the user's row: a
    notification committed after that point is not in the count (its event
    reaches the client, which counts it there), whenever the count runs."""
    tasks = [queue(alice_api).json()["id"] for _ in range(3)]
    for task_id in tasks:
        run_to_the_end(task_id)
    terminal = list(
        Event.objects.filter(user=alice, kind="task.succeeded").order_by("sequence").values_list("sequence", flat=True)
    )
    # The row as it was read when the second task had just ended: the third
    # task's events came after, and are left out of the count.
    position = (terminal[1], 0)
    assert live_services.inbox_state(alice.pk, position) == {"unread": 2, "read_up_to": 0, "last_event_id": terminal[1]}
    assert live_services.inbox_state(alice.pk) == {"unread": 3, "read_up_to": 0, "last_event_id": terminal[2]}
    assert live_services.inbox_state(alice.pk, (terminal[2], terminal[0]))["unread"] == 2


@pytest.mark.parametrize("body", [{}, {"up_to": -1}, {"up_to": "x"}, [1]])
def test_marking_read_refuses_bad_input(alice_api: APIClient, body: object) -> None:
    assert_error(alice_api.post("/api/notifications/read/", body, format="json"), 400)


def test_the_inbox_needs_a_user(anonymous: APIClient) -> None:
    assert_error(anonymous.get("/api/notifications/"), 401)
    assert_error(anonymous.post("/api/notifications/read/", {"up_to": 1}, format="json"), 401)


def test_cleanup_deletes_expired_events_and_idempotency_keys(alice_api: APIClient) -> None:
    from django.core.management import call_command

    from workloads.models import IdempotencyKey

    alice_api.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY="old-key")
    Event.objects.update(created_at=timezone.now() - timedelta(days=30))
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(days=2))
    call_command("cleanup")
    assert not Event.objects.exists()
    assert not IdempotencyKey.objects.exists()
    assert Task.objects.count() == 1
