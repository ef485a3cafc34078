"""The Django admin: users, tasks and events to look at, with search and
filters; tasks and events never added, edited or deleted on their own; one
action, cancel, that goes through the service layer like the owner's own
cancel; and a user's delete, which takes all that is theirs."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from websockets.exceptions import ConnectionClosed

from live.models import Event, EventStream
from tasklight import admin_paging
from workloads import services
from workloads.models import IdempotencyKey, Task, TaskStatus

from .stack import Account, LiveSocket, wait_for

TASKS = "/admin/workloads/task/"
EVENTS = "/admin/live/event/"
USERS = "/admin/auth/user/"
# Session, user, the bounded count and the page of rows joined to their owners,
# plus one: a query per row (3 rows here) would go past it.
MAX_QUERIES_PER_CHANGELIST = 5


def listed(response: Any) -> list[Any]:
    assert response.status_code == 200, response.content[:500]
    return list(response.context["cl"].result_list)


def queue(owner: User, kind: str = "simulate", **params: Any) -> Task:
    """A task stored as the API stores it (the test's transaction never
    commits, so nothing is sent to the broker)."""
    return services.create_task(owner=owner, kind=kind, params=params or {"seconds": 1})


def set_status(task: Task, status: TaskStatus) -> Task:
    Task.objects.filter(pk=task.pk).update(status=status, started_at=timezone.now())
    return Task.objects.get(pk=task.pk)


@pytest.fixture
def tasks(alice: User, bob: User) -> dict[str, Task]:
    return {
        "alice_running": set_status(queue(alice, "primes", below=1000), TaskStatus.RUNNING),
        "alice_done": set_status(queue(alice), TaskStatus.SUCCEEDED),
        "bob_queued": queue(bob),
    }


@pytest.mark.django_db
def test_the_task_list_filters_and_searches(
    admin_client: Client, tasks: dict[str, Task], django_assert_max_num_queries: Any
) -> None:
    def ids(query: str) -> set[Any]:
        with django_assert_max_num_queries(MAX_QUERIES_PER_CHANGELIST):
            return {task.pk for task in listed(admin_client.get(TASKS + query))}

    assert ids("") == {task.pk for task in tasks.values()}
    assert ids("?status=running") == {tasks["alice_running"].pk}
    assert ids("?kind=simulate") == {tasks["alice_done"].pk, tasks["bob_queued"].pk}
    assert ids("?q=bob") == {tasks["bob_queued"].pk}
    assert ids(f"?q={tasks['alice_done'].pk}") == {tasks["alice_done"].pk}
    assert ids("?q=primes&status=running") == {tasks["alice_running"].pk}
    # Not a UUID: the id lookup is skipped, not an error.
    assert ids("?q=not-a-uuid") == set()
    # Queued with no sent_at: what the relay would send.
    assert ids("?unsent=yes") == {tasks["bob_queued"].pk}
    assert ids("?created_at__gte=2000-01-01T00:00:00%2B00:00&status=succeeded") == {tasks["alice_done"].pk}


@pytest.mark.django_db
def test_the_event_list_filters_and_searches(
    admin_client: Client, alice: User, bob: User, django_assert_max_num_queries: Any
) -> None:
    alices = queue(alice)
    services.cancel_task(task_id=alices.pk, owner=alice)
    bobs = queue(bob)

    def events(query: str) -> list[tuple[str, str]]:
        with django_assert_max_num_queries(MAX_QUERIES_PER_CHANGELIST):
            return [(event.task["id"], event.kind) for event in listed(admin_client.get(EVENTS + query))]

    # Newest first, by primary key.
    assert events("") == [
        (str(bobs.pk), "task.queued"),
        (str(alices.pk), "task.cancelled"),
        (str(alices.pk), "task.queued"),
    ]
    assert events(f"?q={alices.pk}") == [(str(alices.pk), "task.cancelled"), (str(alices.pk), "task.queued")]
    assert events("?q=bob") == [(str(bobs.pk), "task.queued")]
    assert events("?kind=task.cancelled") == [(str(alices.pk), "task.cancelled")]
    page = admin_client.get(EVENTS + f"?q={alices.pk}").content.decode()
    assert "task.cancelled" in page and "alice" in page

    streams = listed(admin_client.get("/admin/live/eventstream/?q=alice"))
    assert [(s.user.username, s.last_event_id) for s in streams] == [("alice", 2)]


@pytest.mark.django_db
def test_the_user_list_filters_and_searches(admin_client: Client, alice: User, bob: User) -> None:
    User.objects.filter(pk=bob.pk).update(is_active=False)
    assert [u.username for u in listed(admin_client.get(USERS + "?q=alice"))] == ["alice"]
    assert [u.username for u in listed(admin_client.get(USERS + "?is_active__exact=0"))] == ["bob"]


@pytest.mark.django_db
def test_no_change_list_counts_the_whole_table(
    admin_client: Client, tasks: dict[str, Task], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_paging, "EXACT_COUNT_LIMIT", 1)
    with CaptureQueriesContext(connection) as captured:
        rows = listed(admin_client.get(TASKS))
    counts = [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the change list counted nothing"
    # Every count reads at most EXACT_COUNT_LIMIT + 1 rows; past the bound,
    # the planner's estimate stands in for the rest.
    assert all("LIMIT 2" in sql for sql in counts), counts
    assert any(q["sql"].startswith("EXPLAIN") for q in captured.captured_queries)
    assert len(rows) == 3


@pytest.mark.django_db
def test_tasks_and_events_cannot_be_added_edited_or_deleted(admin_client: Client, tasks: dict[str, Task]) -> None:
    running = tasks["alice_running"]
    event = Event.objects.filter(task__id=str(running.pk)).first()
    assert event is not None
    for add_url in (TASKS + "add/", EVENTS + "add/", "/admin/live/eventstream/add/"):
        assert admin_client.get(add_url).status_code == 403, add_url
    assert f'href="{TASKS}add/"' not in admin_client.get(TASKS).content.decode()

    # The page shows the task, read-only: no form to save.
    page = admin_client.get(f"{TASKS}{running.pk}/change/")
    assert page.status_code == 200 and str(running.pk) in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    edit = admin_client.post(f"{TASKS}{running.pk}/change/", {"status": "succeeded", "_save": "Save"})
    assert edit.status_code == 403
    assert Task.objects.get(pk=running.pk).status == TaskStatus.RUNNING

    assert admin_client.post(f"{TASKS}{running.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.post(f"{EVENTS}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.post(f"{EVENTS}{event.pk}/change/", {"kind": "task.failed"}).status_code == 403
    bulk_delete = admin_client.post(TASKS, {"action": "delete_selected", "_selected_action": [running.pk]})
    assert Task.objects.filter(pk=running.pk).exists(), bulk_delete.status_code
    assert Event.objects.filter(pk=event.pk, kind="task.queued").exists()


@pytest.mark.django_db
def test_a_user_who_is_not_staff_is_sent_to_the_log_in_page(client: Client, alice: User) -> None:
    client.force_login(alice)
    for url in (TASKS, EVENTS, USERS):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url


@pytest.mark.django_db
def test_the_cancel_action_goes_through_the_lifecycle(admin_client: Client, tasks: dict[str, Task]) -> None:
    response = admin_client.post(
        TASKS,
        {"action": "cancel_selected", "_selected_action": [str(task.pk) for task in tasks.values()]},
        follow=True,
    )
    assert "1 queued task(s) cancelled; 1 running task(s) asked to stop." in response.content.decode()

    # Queued: cancelled at once, with its event, as the owner's cancel does.
    queued = Task.objects.get(pk=tasks["bob_queued"].pk)
    assert (queued.status, queued.error) == (TaskStatus.CANCELLED, "Cancelled before it started.")
    kinds = list(Event.objects.filter(task__id=str(queued.pk)).order_by("sequence").values_list("kind", flat=True))
    assert kinds == ["task.queued", "task.cancelled"]
    assert EventStream.objects.get(user=queued.owner).last_event_id == 2
    # Running: asked to stop; its worker ends it (the test below).
    running = Task.objects.get(pk=tasks["alice_running"].pk)
    assert running.status == TaskStatus.RUNNING and running.cancel_requested_at is not None
    # Finished: untouched.
    assert Task.objects.get(pk=tasks["alice_done"].pk).status == TaskStatus.SUCCEEDED
    assert LogEntry.objects.filter(change_message="Cancelled from the admin.").count() == 2


@pytest.mark.django_db
def test_staff_without_the_change_permission_cannot_cancel(client: Client, tasks: dict[str, Task]) -> None:
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_task", "view_event"]))
    client.force_login(viewer)
    assert {t.pk for t in listed(client.get(TASKS))} == {t.pk for t in tasks.values()}
    client.post(TASKS, {"action": "cancel_selected", "_selected_action": [str(tasks["bob_queued"].pk)]})
    assert Task.objects.get(pk=tasks["bob_queued"].pk).status == TaskStatus.QUEUED


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_the_cancel_action_stops_a_task_running_on_a_real_worker(stack: Any, admin_client: Client) -> None:
    alice = Account.sign_up(stack.base_url)
    task_id = alice.queue("simulate", seconds=60)["id"]
    wait_for(
        lambda: Task.objects.filter(pk=task_id, status=TaskStatus.RUNNING).exists(),
        timeout=30,
        what="the task to start on the worker",
    )
    admin_client.post(TASKS, {"action": "cancel_selected", "_selected_action": [task_id]})
    stopped = wait_for(
        lambda: Task.objects.filter(pk=task_id).exclude(status=TaskStatus.RUNNING).first(),
        timeout=30,
        what="the worker to stop the cancelled task",
    )
    assert (stopped.status, stopped.error) == (TaskStatus.CANCELLED, "Cancelled by its owner.")
    kinds = list(Event.objects.filter(task__id=task_id).order_by("sequence").values_list("kind", flat=True))
    assert kinds == ["task.queued", "task.started", "task.cancelled"]


TOKENS = "/admin/accounts/apitoken/"


@pytest.mark.django_db
def test_the_token_pages_name_who_holds_one_never_the_token(admin_client: Client, client: Client, alice: User) -> None:
    """DRF's own token admin listed every key: staff allowed to look could
    then act as any user through the API."""
    key = Token.objects.create(user=alice).key
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_apitoken"))
    client.force_login(viewer)
    for staff in (admin_client, client):
        for url in (TOKENS, f"{TOKENS}{alice.pk}/change/"):
            page = staff.get(url)
            assert page.status_code == 200, url
            assert "alice" in page.content.decode() and key not in page.content.decode(), url
        assert staff.get(f"{TOKENS}add/").status_code == 403
        assert staff.get("/admin/authtoken/tokenproxy/").status_code == 404  # DRF's own


@pytest.mark.django_db(transaction=True)
def test_deleting_a_token_in_the_admin_revokes_it_at_once(admin_client: Client, alice: User) -> None:
    key = Token.objects.create(user=alice).key
    api = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/auth/me/").status_code == 200  # now in the shared token cache
    response = admin_client.post(f"{TOKENS}{alice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:500]
    assert not Token.objects.filter(user=alice).exists()
    assert api.get("/api/auth/me/").status_code == 401


@pytest.mark.django_db
def test_no_admin_page_gives_a_token_key_away(admin_client: Client, alice: User) -> None:
    """A filter on the key answered whether it began with given letters (any
    key could be read off the row count); the user's delete page listed the
    token by its key; the pop-up delete answer named it."""
    key = Token.objects.create(user=alice).key
    assert admin_client.get(TOKENS, {"key__startswith": key[:1]}).status_code == 400
    assert admin_client.get(TOKENS, {"key": key}).status_code == 400
    confirm = admin_client.get(f"{USERS}{alice.pk}/delete/")
    assert confirm.status_code == 200 and key not in confirm.content.decode()
    assert "API token (not shown)" in confirm.content.decode()
    popup = admin_client.post(f"{TOKENS}{alice.pk}/delete/?_popup=1", {"post": "yes", "_popup": "1"})
    assert popup.status_code == 200 and key not in popup.content.decode()
    assert not Token.objects.filter(user=alice).exists()


def nothing_left_of(user_id: int) -> list[str]:
    """What is left of a deleted user: the kinds of rows still holding their id."""
    theirs = {User: "pk", Task: "owner", Event: "user", EventStream: "user", IdempotencyKey: "owner", Token: "user"}
    return [model.__name__ for model, field in theirs.items() if model.objects.filter(**{field: user_id}).exists()]


@pytest.mark.django_db
def test_deleting_a_user_in_the_admin_takes_all_that_is_theirs(
    admin_client: Client, tasks: dict[str, Task], alice: User, bob: User
) -> None:
    """It was refused: tasks and events are read-only in the admin, and
    Django asked for the permission to delete them one by one."""
    key = Token.objects.create(user=alice).key
    services.create_task(owner=alice, kind="simulate", params={"seconds": 1}, idempotency_key="once")
    alices_browser, bobs_browser = Client(), Client()
    alices_browser.force_login(alice)
    bobs_browser.force_login(bob)

    confirm = admin_client.get(f"{USERS}{alice.pk}/delete/")
    page = confirm.content.decode()
    assert confirm.status_code == 200 and "Are you sure you want to delete the user" in page, page[:2000]
    assert "Tasks: 3 (1 running, stopped by its worker; 1 queued, never to start)" in page
    assert "Events: 3" in page and "Idempotency keys: 1" in page
    assert "API token (not shown)" in page and key not in page

    response = admin_client.post(f"{USERS}{alice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:500]
    assert nothing_left_of(alice.pk) == []
    assert not Session.objects.filter(session_key=alices_browser.session.session_key).exists()
    assert alices_browser.get("/api/auth/me/").status_code in (401, 403)
    # Bob's are untouched.
    assert Task.objects.filter(owner=bob).count() == 1 and Event.objects.filter(user=bob).exists()
    assert bobs_browser.get("/api/auth/me/").status_code == 200
    assert LogEntry.objects.filter(object_repr="alice", action_flag=3).exists()  # DELETION


@pytest.mark.django_db
def test_the_delete_selected_users_action_takes_all_that_is_theirs(
    admin_client: Client, tasks: dict[str, Task], alice: User, bob: User
) -> None:
    carol = User.objects.create_user("carol")  # not selected: stays
    services.create_task(owner=carol, kind="simulate", params={"seconds": 1})
    selected = {"action": "delete_selected", "_selected_action": [alice.pk, bob.pk]}
    page = admin_client.post(USERS, selected).content.decode()
    assert "Are you sure you want to delete the selected users?" in page, page[:2000]
    assert "Tasks: 2 (1 running, stopped by its worker)" in page  # alice's
    assert "Tasks: 1 (1 queued, never to start)" in page  # bob's

    done = admin_client.post(USERS, {**selected, "post": "yes"}, follow=True)
    assert "Successfully deleted 2 users." in done.content.decode()
    assert nothing_left_of(alice.pk) == [] and nothing_left_of(bob.pk) == []
    assert Task.objects.filter(owner=carol).count() == 1


@pytest.mark.django_db
def test_deleting_a_user_takes_the_delete_user_permission_and_no_other(
    client: Client, tasks: dict[str, Task], alice: User
) -> None:
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_user", "change_user"]))
    client.force_login(operator)
    assert client.get(f"{USERS}{alice.pk}/delete/").status_code == 403
    assert client.post(f"{USERS}{alice.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(USERS, {"action": "delete_selected", "_selected_action": [alice.pk], "post": "yes"})
    assert User.objects.filter(pk=alice.pk).exists() and Task.objects.filter(owner=alice).count() == 2

    # No permission on tasks or events: they are deleted with their user only.
    operator.user_permissions.add(Permission.objects.get(codename="delete_user"))
    assert "Are you sure" in client.get(f"{USERS}{alice.pk}/delete/").content.decode()
    assert client.post(f"{USERS}{alice.pk}/delete/", {"post": "yes"}).status_code == 302
    assert nothing_left_of(alice.pk) == []


@pytest.mark.django_db
def test_the_delete_page_counts_a_users_tasks_and_events_rather_than_listing_them(
    admin_client: Client, alice: User, django_assert_max_num_queries: Any
) -> None:
    """Django's page fetched and listed every row: 23 s for 100,000 tasks
    and 200,000 events. Now a few queries, whatever the number of rows."""
    Task.objects.bulk_create(Task(owner=alice, kind="simulate", status=TaskStatus.SUCCEEDED) for _ in range(2000))
    Event.objects.bulk_create(Event(user=alice, sequence=n, kind="task.succeeded", task={}) for n in range(1, 3001))
    with django_assert_max_num_queries(20):
        confirm = admin_client.get(f"{USERS}{alice.pk}/delete/")
    page = confirm.content.decode()
    assert confirm.status_code == 200 and "Tasks: 2,000" in page and "Events: 3,000" in page, page[:2000]
    assert str(Task.objects.filter(owner=alice)[0].pk) not in page
    assert page.count("<li>") < 20


def close_code(live: LiveSocket) -> int | None:
    """Waits (10 s at most) for the server to close the socket; its close code."""
    try:
        while True:
            live.next(timeout=10)  # TimeoutError if it stays open
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_deleting_a_user_in_the_admin_stops_their_running_tasks_and_closes_their_sockets(
    stack: Any, admin_client: Client
) -> None:
    alice, bob = Account.sign_up(stack.base_url), Account.sign_up(stack.base_url)
    # Two: each pool process of the worker (2) runs one of alice's.
    running = [alice.queue("simulate", seconds=60)["id"] for _ in range(2)]
    wait_for(
        lambda: Task.objects.filter(pk__in=running, status=TaskStatus.RUNNING).count() == 2,
        timeout=30,
        what="alice's tasks to start on the worker",
    )
    user_id = User.objects.get(username=alice.username).pk
    with alice.socket() as live:
        response = admin_client.post(f"{USERS}{user_id}/delete/", {"post": "yes"})
        assert response.status_code == 302, response.content[:500]
        assert close_code(live) == 4401
    assert nothing_left_of(user_id) == []
    # Both pool processes are free again: bob's two run at once, long
    # before alice's 60 seconds.
    bobs = [bob.queue("simulate", seconds=5)["id"] for _ in range(2)]
    wait_for(
        lambda: Task.objects.filter(pk__in=bobs, status=TaskStatus.RUNNING).count() == 2,
        timeout=20,
        what="the worker to stop alice's tasks and run bob's",
    )
