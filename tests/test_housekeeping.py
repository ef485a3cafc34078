"""What Tasklight keeps only for a while goes once it has expired: the
cleanup (every worker's housekeeper, and ``manage.py cleanup``) deletes
expired sessions, idempotency keys and events, in batches, and keeps the
rest (docs/operations.md, "What Tasklight keeps, and for how long")."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework.test import APIClient

from accounts.sessions import SessionStore
from live.models import Event
from workloads import workers
from workloads.models import IdempotencyKey, Worker

from .stack import HTTP_TIMEOUT, PASSWORD, wait_for

AN_HOUR_AGO = timedelta(hours=1)


def signed_in(username: str) -> tuple[APIClient, str]:
    """A client signed in over the JSON API, and its session's key."""
    client = APIClient()
    User.objects.create_user(username=username, password=PASSWORD)
    response = client.post("/api/auth/login/", {"username": username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return client, client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.mark.django_db
def test_the_cleanup_deletes_expired_sessions_and_keeps_the_others() -> None:
    # carol's session has expired (she never logged out: a closed laptop);
    # dave's is current and must keep him signed in.
    _, expired = signed_in("carol")
    dave, current = signed_in("dave")
    Session.objects.filter(pk=expired).update(expire_date=timezone.now() - AN_HOUR_AGO)

    out = StringIO()
    call_command("cleanup", stdout=out)

    assert not Session.objects.filter(pk=expired).exists()
    assert Session.objects.filter(pk=current).exists()
    assert dave.get("/api/auth/me/").json()["username"] == "dave"
    assert "1 expired session(s)" in out.getvalue()


def expired_sessions(count: int) -> None:
    for _ in range(count):
        store = SessionStore()
        store["seen"] = True
        store.create()
    Session.objects.update(expire_date=timezone.now() - AN_HOUR_AGO)


def expired_keys(count: int) -> None:
    owner = User.objects.create_user(username="erin")
    client = APIClient()
    client.force_authenticate(owner)
    for n in range(count):
        response = client.post("/api/tasks/", {"kind": "simulate"}, format="json", HTTP_IDEMPOTENCY_KEY=f"key-{n}")
        assert response.status_code == 202, response.content
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(days=2))


def expired_events(count: int) -> None:
    expired_keys(count)  # a task queued makes an event
    Event.objects.update(created_at=timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS + 1))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "deleter", "table"),
    [
        (expired_sessions, "accounts.services.delete_expired_sessions", "django_session"),
        (expired_keys, "workloads.services.delete_expired_idempotency_keys", "workloads_idempotencykey"),
        (expired_events, "live.services.delete_expired_events", "live_event"),
    ],
    ids=["sessions", "idempotency keys", "events"],
)
def test_expired_rows_are_deleted_in_batches(make: Callable[[int], None], deleter: str, table: str) -> None:
    """However much has piled up (a deployment whose workers were stopped for
    weeks), each DELETE takes a batch: a short transaction, and row locks on
    that many rows at most."""
    delete: Callable[..., int] = import_string(deleter)
    make(5)
    with CaptureQueriesContext(connection) as queries:
        assert delete(batch=2) == 5
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE") and f'"{table}"' in q["sql"]]
    assert len(deletes) == 3, deletes
    assert delete(batch=2) == 0


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_worker_deletes_expired_sessions_and_keeps_the_current_ones(private_stack) -> None:
    """Nothing else deletes them: Django leaves that to a `clearsessions` run
    by cron, which a deployment of Tasklight's Procfile does not have."""
    running = private_stack()
    clients = []
    for _ in range(2):
        client = httpx.Client(base_url=running.base_url, timeout=HTTP_TIMEOUT)
        username = f"user-{uuid.uuid4().hex[:10]}"
        assert client.post("/api/auth/signup/", json={"username": username, "password": PASSWORD}).status_code == 201
        clients.append(client)
    expired, current = (client.cookies[settings.SESSION_COOKIE_NAME] for client in clients)
    Session.objects.filter(pk=expired).update(expire_date=timezone.now() - AN_HOUR_AGO)

    worker = running.start_worker(concurrency=1)  # its first cleanup runs within its first round
    wait_for(
        lambda: not Session.objects.filter(pk=expired).exists(),
        timeout=20,
        what="the worker's housekeeper to delete the expired session",
    )
    assert Session.objects.filter(pk=current).exists()
    assert clients[1].get("/api/auth/me/").status_code == 200
    assert re.search(r"cleanup: deleted .*\d+ expired session\(s\)", worker.log()), worker.log()[-3000:]
    for client in clients:
        client.close()


def worker_report(*, queue: str, last_seen: timedelta) -> Worker:
    """The row of a worker killed ``last_seen`` ago: it could not delete it."""
    seen_at = timezone.now() - last_seen
    return Worker.objects.create(
        id=uuid.uuid4(),
        name=f"killed-{uuid.uuid4().hex[:6]}@test",
        pid=1,
        queue=queue,
        concurrency=1,
        report_seconds=1,
        started_at=seen_at,
        seen_at=seen_at,
    )


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_running_worker_forgets_the_reports_of_workers_unseen_for_a_day(private_stack) -> None:
    """They were forgotten only when a worker of their queue started: a
    deployment whose workers all ran on kept a killed one's row for good."""
    running = private_stack()
    worker = running.start_worker(concurrency=1, CLEANUP_INTERVAL_SECONDS="1")
    queue = running.worker_env["TASKLIGHT_QUEUE"]
    wait_for(lambda: Worker.objects.filter(pid=worker.popen.pid).exists(), timeout=10, what="its own report")
    # Killed while this worker ran: a day and more ago, and an hour ago.
    old = worker_report(queue=queue, last_seen=workers.FORGET_AFTER + timedelta(minutes=1))
    recent = worker_report(queue=queue, last_seen=AN_HOUR_AGO)
    wait_for(lambda: not Worker.objects.filter(pk=old.pk).exists(), timeout=20, what="the old report to go")
    assert Worker.objects.filter(pk=recent.pk).exists()
    assert Worker.objects.filter(pid=worker.popen.pid).exists()
    assert re.search(r"cleanup: deleted .*1 worker report\(s\) unseen for a day", worker.log()), worker.log()[-3000:]


@pytest.mark.django_db
def test_the_cleanup_command_forgets_worker_reports_unseen_for_a_day() -> None:
    old = worker_report(queue="any-queue", last_seen=workers.FORGET_AFTER + timedelta(minutes=1))
    recent = worker_report(queue="any-queue", last_seen=workers.FORGET_AFTER - timedelta(minutes=1))
    out = StringIO()
    call_command("cleanup", stdout=out)
    assert not Worker.objects.filter(pk=old.pk).exists()
    assert Worker.objects.filter(pk=recent.pk).exists()
    assert "1 worker report(s) unseen for a day" in out.getvalue()
