"""The whole loop on real processes: uvicorn + a Celery worker on
PostgreSQL, RabbitMQ and Redis. Sign up over HTTP, open /ws/ with a token,
queue work, hear about it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from workloads.models import Task

from .stack import HTTP_TIMEOUT, Account, terminal_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_a_task_is_run_and_announced_to_every_socket_of_its_owner_only(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    bob = Account.sign_up(stack.base_url)
    with alice.socket() as first, alice.socket() as second, bob.socket() as bobs:
        task = alice.queue("simulate", seconds=0.5)
        for socket in (first, second):
            events = socket.events_until(terminal_for(task["id"]))
            assert [e["event"] for e in events] == ["task.queued", "task.started", "task.succeeded"]
            assert [e["id"] for e in events] == [1, 2, 3]
            assert events[-1]["task"]["result"] == {"slept": 0.5}
            assert events[-1]["task"]["status"] == "succeeded"
        # Bob's own task, queued after alice's finished: everything bob hears
        # up to its end is his own. Nothing of alice's slipped in before it.
        bobs_task = bob.queue("simulate", seconds=0)
        events = bobs.events_until(terminal_for(bobs_task["id"]))
        assert {e["task"]["id"] for e in events} == {bobs_task["id"]}
        assert all(frame["task"]["id"] == bobs_task["id"] for frame in bobs.frames[1:])

    stored = Task.objects.get(pk=task["id"])
    assert (stored.status, stored.result, stored.progress) == ("succeeded", {"slept": 0.5}, 100)
    assert stored.started_at and stored.finished_at and stored.started_at <= stored.finished_at
    assert alice.http.get(f"/api/tasks/{task['id']}/").json()["status"] == "succeeded"


def test_progress_frames_follow_a_running_task(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=1.5)
        socket.events_until(terminal_for(task["id"]))
    progress = [f["task"]["progress"] for f in socket.frames if f["type"] == "progress"]
    assert progress, "no progress frame arrived"
    assert progress == sorted(progress) and 0 < progress[-1] <= 100


def test_a_failing_workload_reaches_the_user_as_task_failed_with_a_readable_error(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=0, fail=True)
        events = socket.events_until(terminal_for(task["id"]))
    assert [e["event"] for e in events] == ["task.queued", "task.started", "task.failed"]
    failed = events[-1]["task"]
    assert failed["status"] == "failed" and failed["result"] is None
    assert failed["error"] == "Simulated failure after 0 seconds, as requested."
    assert Task.objects.get(pk=task["id"]).error == failed["error"]


@pytest.mark.parametrize(
    ("kind", "params", "result"),
    [
        ("primes", {"below": 100_000}, {"count": 9592}),
        (
            "text_stats",
            {"text": "one two\ntwo three three\nthree"},
            {
                "words": 6,
                "lines": 3,
                "top_words": [["three", 3], ["two", 2], ["one", 1]],
            },
        ),
    ],
)
def test_the_shipped_workloads_compute_their_results_on_a_worker(
    stack: Any, kind: str, params: dict, result: dict
) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue(kind, **params)
        events = socket.events_until(terminal_for(task["id"]))
    assert events[-1]["event"] == "task.succeeded", events[-1]
    assert events[-1]["task"]["result"] == result


def test_an_oversized_frame_closes_that_socket_only(stack: Any) -> None:
    alice, bob = Account.sign_up(stack.base_url), Account.sign_up(stack.base_url)
    with alice.socket() as abuser, bob.socket() as bystander:
        abuser.ws.send('{"type": "ping", "id": "' + "x" * 100_000 + '"}')
        with pytest.raises(ConnectionClosed) as closed:
            abuser.next(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009  # message too big (--ws-max-size 65536)
        bystander.ws.send('{"type": "ping", "id": 1}')
        assert bystander.next() == {"type": "pong", "id": 1}
    assert httpx.get(f"{stack.base_url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200
