"""Each dependency fails under load and comes back: nothing lost, nothing run
twice. These restart the real PostgreSQL and RabbitMQ of this machine."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection

from bench.procs import pg_ctlcluster
from live.models import Event
from workloads.models import Task

from .stack import HTTP_TIMEOUT, Account, until_all_finished, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def postgresql(action: str) -> None:
    pg_ctlcluster(action)


def rabbitmq(action: str) -> None:
    subprocess.run(["rabbitmqctl", action], check=True, capture_output=True, timeout=120)


def assert_each_ran_once(task_ids: list[str]) -> None:
    connection.close()  # the test's own connection did not survive a restart
    assert set(Task.objects.filter(pk__in=task_ids).values_list("status", flat=True)) == {"succeeded"}
    for task_id in task_ids:
        kinds = list(Event.objects.filter(task__id=task_id).order_by("sequence").values_list("kind", flat=True))
        assert kinds == ["task.queued", "task.started", "task.succeeded"], (task_id, kinds)


def test_postgresql_restarted_under_load(private_stack) -> None:
    running = private_stack()
    running.start_worker(concurrency=2)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        before = [alice.queue("simulate", seconds=1) for _ in range(6)]
        postgresql("stop")
        try:
            # A web process waits up to its pool's timeout (10 s) for a
            # connection before it gives up and answers 503.
            refused = alice.http.post("/api/tasks/", json={"kind": "simulate", "params": {"seconds": 0}}, timeout=30)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "database_unavailable"
            ready = httpx.get(f"{running.base_url}/readyz", timeout=30)
            assert (ready.status_code, ready.json()["down"]) == (503, ["database"])
        finally:
            postgresql("start")
        back = time.monotonic()
        wait_for(lambda: alice.http.get("/api/tasks/").status_code == 200, timeout=10, what="the API to recover")
        assert time.monotonic() - back < 10
        after = alice.queue("simulate", seconds=0)
        ids = [t["id"] for t in [*before, after]]
        socket.events_until(until_all_finished(ids), timeout=120)
    assert_each_ran_once(ids)


def test_rabbitmq_restarted_under_load(private_stack) -> None:
    running = private_stack()
    running.start_worker(concurrency=2)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        before = [alice.queue("simulate", seconds=1) for _ in range(6)]
        rabbitmq("stop_app")
        try:
            # The broker being away is no reason to refuse work.
            during = [alice.queue("simulate", seconds=0) for _ in range(4)]
        finally:
            rabbitmq("start_app")
        ids = [t["id"] for t in [*before, *during]]
        socket.events_until(until_all_finished(ids), timeout=180)
    assert_each_ran_once(ids)


def test_a_web_process_serves_again_within_seconds_of_postgresql_coming_back(private_stack) -> None:
    """Requests made during a long outage leave its pool retrying: the first
    one after the database is back waits for that retry, not for a backoff
    grown through the outage."""
    running = private_stack()
    alice = Account.sign_up(running.base_url)
    assert alice.http.get("/api/tasks/").status_code == 200
    postgresql("stop")
    try:
        # Each waits out the pool's 10 s for a connection: 20 s down in all.
        for _ in range(2):
            assert alice.http.get("/api/tasks/", timeout=30).status_code == 503
    finally:
        postgresql("start")
    back = time.monotonic()
    assert alice.http.get("/api/tasks/", timeout=30).status_code == 200
    waited = time.monotonic() - back
    connection.close()  # the test's own connection did not survive the restart
    assert waited < 4, f"the first request after the restart waited {waited:.1f} s"


def test_a_web_process_whose_pool_had_grown_serves_again_at_once_after_a_restart(private_stack) -> None:
    """Every idle connection of a grown pool breaks when PostgreSQL restarts.
    The pool alone found that out one connection per try, with 1, 2, 4 s
    sleeps between tries, and the first request after the restart ran out
    of its 10 s: 503. The first broken one now has all of them checked."""
    name = f"tl-pool-{uuid.uuid4().hex[:8]}"
    running = private_stack(DATABASE_APPLICATION_NAME=name)
    alice = Account.sign_up(running.base_url)

    def pooled() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
            return int(cursor.fetchone()[0])

    def burst() -> bool:
        with ThreadPoolExecutor(max_workers=24) as clients:
            answers = list(clients.map(lambda _: alice.http.get("/api/tasks/").status_code, range(240)))
        assert set(answers) == {200}
        return pooled() >= 6

    wait_for(burst, timeout=60, what="the web process's pool to grow to 6 connections")
    postgresql("restart")
    back = time.monotonic()
    answer = alice.http.get("/api/tasks/", timeout=30)
    waited = time.monotonic() - back
    connection.close()  # the test's own connection did not survive the restart
    assert answer.status_code == 200, answer.text
    assert waited < 3, f"the first request after the restart waited {waited:.1f} s"
    assert "checking the pool's idle connections" in running.logs()


def test_a_web_process_cut_off_from_redis_answers_503_and_changes_nothing(private_stack) -> None:
    """What needs the shared cache (the rate limit on queueing, revoking a
    token, log-in failure counts) answers 503 with a retry hint, not 500, and
    changes nothing: in JSON from the API, as a page from the log-in form."""
    running = private_stack()
    alice = Account.sign_up(running.base_url)
    cut_off = private_stack(CHANNEL_LAYER_URL="redis://127.0.0.1:1/0")  # nothing listens there
    headers = {"Authorization": alice.http.headers["Authorization"]}
    queued = httpx.post(
        f"{cut_off.base_url}/api/tasks/",
        json={"kind": "simulate", "params": {"seconds": 0}},
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )
    revoked = httpx.delete(f"{cut_off.base_url}/api/auth/token/", headers=headers, timeout=HTTP_TIMEOUT)
    logged_in = httpx.post(
        f"{cut_off.base_url}/api/auth/login/", json={"username": alice.username, "password": "x"}, timeout=HTTP_TIMEOUT
    )
    for response in (queued, revoked, logged_in):
        assert (response.status_code, response.json()["error"]["code"]) == (503, "cache_unavailable")
        assert response.headers["Retry-After"] == "5"
    assert not Task.objects.filter(owner__username=alice.username).exists()
    assert alice.http.get("/api/tasks/").status_code == 200  # the token still works
    # Reading needs no cache: the token is read from the database instead.
    assert httpx.get(f"{cut_off.base_url}/api/tasks/", headers=headers, timeout=HTTP_TIMEOUT).status_code == 200
    # The log-in page too: a 503 page.
    with httpx.Client(base_url=cut_off.base_url, timeout=HTTP_TIMEOUT) as browser:
        page = browser.get("/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert page.status_code == 200 and csrf is not None
        form = {"csrfmiddlewaretoken": csrf.group(1), "username": alice.username, "password": "x"}
        refused = browser.post("/login/", data=form)
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "5")
    assert "Back in a moment" in refused.text
    # Django's line for these four 503s was an ERROR each: now one WARNING a minute.
    lines = [json.loads(line) for line in cut_off.web.log().splitlines() if line.startswith("{")]
    from_django = [(line["level"], line["message"]) for line in lines if line["logger"] == "django.request"]
    assert from_django == [
        ("WARNING", "Service Unavailable: /api/tasks/: answered 503 cache_unavailable, a dependency being down")
    ]
