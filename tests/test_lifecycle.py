"""A task's life on real processes: progress, cancel, limits, time limits and
the delivery guarantees when workers die or the broker is away."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from live.models import Event
from workloads.models import Task
from workloads.registry import UNSTORABLE_TEXT

from .proxy import TcpProxy
from .stack import Account, pool_processes, terminal_for, until_all_finished, wait_for
from .test_workers import database_address, worker_node

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def kinds_for(task_id: str) -> list[str]:
    """The stored lifecycle events of one task, in order."""
    return [e.kind for e in Event.objects.filter(task__id=task_id).order_by("user_id", "sequence")]


def test_progress_frames_of_a_primes_run_are_bounded(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("primes", below=100_000_000)
        events = socket.events_until(terminal_for(task["id"]), timeout=120)
    assert events[-1]["task"]["result"] == {"count": 5_761_455}
    progress = [f for f in socket.frames if f["type"] == "progress" and f["task"]["id"] == task["id"]]
    stored = Task.objects.get(pk=task["id"])
    seconds = (stored.finished_at - stored.started_at).total_seconds()
    # The sieve reports ~95 times; coalescing lets through one per 0.25 s and
    # per percent, none in the first 0.25 s (a fast machine sieves in under
    # 0.3 s: one frame or none, then).
    assert min(2, math.floor(seconds / 0.3)) <= len(progress) <= min(101, math.ceil(seconds / 0.25) + 1)
    percents = [f["task"]["progress"] for f in progress]
    assert percents == sorted(set(percents))


def test_a_queued_task_cancelled_never_starts(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        # MAX_RUNNING_TASKS_PER_USER is 2 here: the third task has to wait.
        busy = [alice.queue("simulate", seconds=2) for _ in range(2)]
        socket.events_until(lambda e: e["event"] == "task.started" and e["task"]["id"] == busy[1]["id"])
        waiting = alice.queue("simulate", seconds=0)
        response = alice.http.post(f"/api/tasks/{waiting['id']}/cancel/")
        assert (response.status_code, response.json()["status"]) == (202, "cancelled")
        socket.events_until(until_all_finished([t["id"] for t in busy]))
    assert kinds_for(waiting["id"]) == ["task.queued", "task.cancelled"]
    assert Task.objects.get(pk=waiting["id"]).started_at is None


def test_a_running_task_stops_at_its_next_check(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=60)
        socket.events_until(lambda e: e["event"] == "task.started")
        response = alice.http.post(f"/api/tasks/{task['id']}/cancel/")
        assert response.status_code == 202
        events = socket.events_until(terminal_for(task["id"]))
    assert events[-1]["event"] == "task.cancelled"
    assert events[-1]["task"]["error"] == "Cancelled by its owner."
    stored = Task.objects.get(pk=task["id"])
    # Stopped within the grace period (2 s here), not at the end of its 60 s.
    assert (stored.finished_at - stored.cancel_requested_at).total_seconds() < 2
    assert alice.http.post(f"/api/tasks/{task['id']}/cancel/").status_code == 409


def test_a_workload_that_returns_once_it_sees_the_cancel_ends_cancelled(stack: Any) -> None:
    # Before, it ended "succeeded" at 100 % with its partial result, though
    # its owner's cancel had been answered 202 and the workload had seen it.
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("returns_when_cancelled", seconds=60)
        socket.events_until(lambda e: e["event"] == "task.started")
        assert alice.http.post(f"/api/tasks/{task['id']}/cancel/").status_code == 202
        events = socket.events_until(terminal_for(task["id"]))
    assert events[-1]["event"] == "task.cancelled"
    assert (events[-1]["task"]["error"], events[-1]["task"]["result"]) == ("Cancelled by its owner.", None)
    stored = Task.objects.get(pk=task["id"])
    assert (stored.finished_at - stored.cancel_requested_at).total_seconds() < 2
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.cancelled"]


def test_a_task_that_ignores_cancellation_is_killed_after_the_grace_period(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("ignores_cancellation", seconds=60)
        socket.events_until(lambda e: e["event"] == "task.started")
        alice.http.post(f"/api/tasks/{task['id']}/cancel/")
        events = socket.events_until(terminal_for(task["id"]))
        assert events[-1]["event"] == "task.cancelled"
        assert "stopped after it ran 2 s past the request" in events[-1]["task"]["error"]
        # The worker replaced the killed process and goes on working.
        after = alice.queue("simulate", seconds=0)
        assert socket.events_until(terminal_for(after["id"]))[-1]["event"] == "task.succeeded"
    assert kinds_for(task["id"]).count("task.cancelled") == 1


def test_a_workload_past_its_hard_time_limit_fails_readably(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("ignores_time_limit", seconds=30)
        events = socket.events_until(terminal_for(task["id"]), timeout=30)
    assert events[-1]["event"] == "task.failed"
    assert events[-1]["task"]["error"] == "The task was stopped at its hard time limit of 2 s."


def test_a_progress_that_is_not_a_finite_number_fails_the_task_naming_it(stack: Any) -> None:
    # Before, NaN failed it as "ValueError: cannot convert float NaN to
    # integer", and a string as "TypeError: unsupported operand type(s) for
    # /: 'str' and 'int'" (after making it a hundred times as long).
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        tasks = {report: alice.queue("reports_progress", report=report)["id"] for report in ("nan", "text")}
        events = socket.events_until(until_all_finished(list(tasks.values())))
    ended = {e["task"]["id"]: e for e in events if e["event"] in ("task.succeeded", "task.failed", "task.cancelled")}
    outcomes = {report: (ended[task_id]["event"], ended[task_id]["task"]["error"]) for report, task_id in tasks.items()}
    assert outcomes == {
        "nan": ("task.failed", "The workload crashed: ValueError: run.progress() takes finite numbers: done is nan"),
        "text": ("task.failed", "The workload crashed: TypeError: run.progress() takes numbers: done is '50' (str)"),
    }


def test_a_task_that_ends_badly_fails_readably_instead_of_staying_running(stack: Any) -> None:
    # Before, each of these raised out of the worker's task after the
    # workload had ended: the message was acknowledged and the task stayed
    # running for good, holding a place of its owner's cap.
    alice = Account.sign_up(stack.base_url)
    hows = ["unreadable_error", "tuple_with_nul", "deep_result", "unstorable_outcome", "huge_integer"]
    errors = {}
    with alice.socket() as socket:
        for pair in (hows[:2], hows[2:4], hows[4:]):  # MAX_RUNNING_TASKS_PER_USER is 2 here
            tasks = {how: alice.queue("ends_badly", how=how)["id"] for how in pair}
            events = socket.events_until(until_all_finished(list(tasks.values())))
            ended = {e["task"]["id"]: e for e in events if e["event"] == "task.failed"}
            errors.update({how: ended[task_id]["task"]["error"] for how, task_id in tasks.items()})
        # The pool process that ran the last one ends its next task as usual.
        after = [alice.queue("reverse", text="ab")["id"] for _ in range(2)]
        socket.events_until(until_all_finished(after))
    assert errors == {
        "unreadable_error": "The workload crashed: UnreadableError: (its message could not be read: RuntimeError)",
        "tuple_with_nul": "The workload returned text that cannot be stored, at result.rows.0: " + UNSTORABLE_TEXT,
        "deep_result": "The workload returned a result nested more than 100 levels deep.",
        "unstorable_outcome": "The workload ended, but its outcome could not be stored (DataError).",
        # Before, stored, but its task.succeeded could not be pushed (msgpack: OverflowError):
        # the socket heard of it only at its next ping.
        "huge_integer": (
            "The workload returned an integer past 64 bits, at result.counts.1: return it as text "
            "(JavaScript reads no integer past 2**53 exactly)."
        ),
    }
    assert [Task.objects.get(pk=task_id).result for task_id in after] == [{"reversed": "ba"}] * 2


def test_a_workload_that_calls_sys_exit_fails_at_once_naming_the_call(stack: Any) -> None:
    # Before, its SystemExit ended the pool process (argparse's error in a
    # workload does it): Celery took it for a lost worker, the message went
    # back to the queue, and the task ran again for good, killing a pool
    # process each time, and stayed running.
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("ends_its_process", how="sys_exit")
        events = socket.events_until(terminal_for(task["id"]), timeout=30)
        assert events[-1]["event"] == "task.failed"
        assert events[-1]["task"]["error"] == "The workload called sys.exit(2)."
        after = alice.queue("reverse", text="ab")
        assert socket.events_until(terminal_for(after["id"]))[-1]["event"] == "task.succeeded"
    assert Task.objects.get(pk=task["id"]).starts == 1  # not run again
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.failed"]


def test_a_workload_that_ends_its_process_fails_after_three_starts_naming_how(stack: Any) -> None:
    # Before, the task ran again on every redelivery, for good, killing a
    # pool process each time, and stayed running.
    hows = {"os_exit": "exitcode 1", "segfault": "signal 11 (SIGSEGV)", "killed": "signal 9 (SIGKILL)"}
    accounts = {how: Account.sign_up(stack.base_url) for how in hows}  # each its own cap of running tasks
    tasks = {how: account.queue("ends_its_process", how=how)["id"] for how, account in accounts.items()}
    wait_for(
        lambda: Task.objects.filter(pk__in=tasks.values(), status="failed").count() == len(tasks),
        timeout=120,
        what="each task to fail",
        interval=0.2,
    )
    for how, task_id in tasks.items():
        task = Task.objects.get(pk=task_id)
        assert task.error == (
            f"Its worker process died 3 times while running it (the last time: {hows[how]}), so it is not run again."
        )
        assert task.starts == 3
        assert kinds_for(task_id) == ["task.queued", "task.started", "task.failed"]


def test_a_task_whose_pool_process_died_once_runs_again_and_succeeds(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("ends_its_process", how="first_start_only")
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.succeeded"
    assert events[-1]["task"]["result"] == {"starts": 2}
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]


def test_a_long_error_is_cut_in_the_database_the_events_and_the_log(stack: Any) -> None:
    # Before, a workload's 10 MB message was stored whole, and sent in every
    # frame and answer that held its task; the worker logged it in one line.
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        tasks = [alice.queue("fails_at_length", length=10_000_000, crash=crash)["id"] for crash in (False, True)]
        events = socket.events_until(until_all_finished(tasks))
    sent = {e["task"]["id"]: e["task"]["error"] for e in events if e["event"] == "task.failed"}
    listed = {t["id"]: t["error"] for t in alice.http.get("/api/tasks/").json()["results"]}
    for task_id, start in zip(tasks, ["EEEE", "The workload crashed: RuntimeError: EEEE"], strict=True):
        stored = Task.objects.get(pk=task_id).error
        assert len(stored) == 2000
        assert stored.startswith(start)
        assert stored.endswith(f"E… [cut: {10_000_000 + len(start) - 4:,} characters in all]")
        assert sent[task_id] == listed[task_id] == stored
    [crash_line] = [line for line in stack.workers[0].log().splitlines() if f"task {tasks[1]} (" in line]
    assert json.loads(crash_line)["level"] == "ERROR"
    assert len(crash_line) < 20_000
    assert "characters] …" in json.loads(crash_line)["exc_info"]


def test_a_workload_installed_by_the_recipe_runs_on_the_worker(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    names = [w["name"] for w in alice.http.get("/api/workloads/").json()]
    assert "reverse" in names
    bad = alice.http.post("/api/tasks/", json={"kind": "reverse", "params": {"text": "x", "times": 11}})
    assert bad.status_code == 400
    assert "params.times" in bad.json()["error"]["fields"]
    with alice.socket() as socket:
        task = alice.queue("reverse", text="abc", times=2)
        events = socket.events_until(terminal_for(task["id"]))
    assert events[-1]["task"]["result"] == {"reversed": "cbacba"}


def test_ten_parallel_posts_with_one_idempotency_key_make_one_task(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    barrier = threading.Barrier(10)
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=stack.base_url, headers=dict(alice.http.headers), timeout=30) as client:
            barrier.wait()
            answers.append(
                client.post(
                    "/api/tasks/",
                    json={"kind": "simulate", "params": {"seconds": 0}},
                    headers={"Idempotency-Key": "burst-1"},
                )
            )

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 10
    assert len({a.json()["id"] for a in answers}) == 1
    assert Task.objects.filter(owner__username=alice.username).count() == 1


def test_the_running_cap_holds_under_a_burst_and_other_users_are_not_starved(private_stack) -> None:
    running = private_stack()
    running.start_worker(concurrency=4)
    running.start_worker(concurrency=2)
    alice, bob = Account.sign_up(running.base_url), Account.sign_up(running.base_url)
    with alice.socket() as socket:
        burst = [alice.queue("simulate", seconds=0.5) for _ in range(8)]
        bobs = bob.queue("simulate", seconds=0)
        socket.events_until(until_all_finished([t["id"] for t in burst]), timeout=90)
    # Alice's events are in commit order: replay them and count what runs.
    now_running, most = 0, 0
    for kind in Event.objects.filter(user__username=alice.username).order_by("sequence").values_list("kind", flat=True):
        now_running += {"task.started": 1, "task.succeeded": -1}.get(kind, 0)
        most = max(most, now_running)
    assert most == 2  # MAX_RUNNING_TASKS_PER_USER
    bobs_task = wait_for(lambda: Task.objects.filter(pk=bobs["id"], status="succeeded").first(), timeout=30, what="bob")
    last_alice_start = max(Task.objects.filter(pk__in=[t["id"] for t in burst]).values_list("started_at", flat=True))
    assert bobs_task.started_at < last_alice_start, "bob waited behind alice's whole burst"


def test_a_worker_killed_mid_task_is_replaced_and_the_task_finishes_once(private_stack) -> None:
    running = private_stack()
    doomed = running.start_worker(concurrency=1)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=3)
        socket.events_until(lambda e: e["event"] == "task.started")
        os.killpg(doomed.popen.pid, signal.SIGKILL)  # the worker; its pool processes die with it
        doomed.popen.wait(10)
        running.start_worker(concurrency=1)
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.succeeded"
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]


def test_a_pool_process_dying_while_the_database_is_silent_holds_up_nothing_else(private_stack) -> None:
    """The worker's main process looks at the task of a pool process that
    died, to count its starts. It did so on its event loop, which receives
    and acknowledges every task's messages and answers remote control: with
    the database silent (its host lost), that loop stood still for the
    connect timeout, 10 s, and the liveness probe failed meanwhile."""
    from tasklight.celery import app as celery_app

    running = private_stack()
    with TcpProxy(*database_address()) as proxy:
        worker = running.start_worker(concurrency=1, DATABASE_URL=proxy.url_for(running.worker_env["DATABASE_URL"]))
        node = worker_node(worker.log())
        alice = Account.sign_up(running.base_url)
        task = alice.queue("simulate", seconds=5)
        wait_for(lambda: Task.objects.filter(pk=task["id"], status="running").exists(), timeout=30, what="the start")
        [pool_process] = pool_processes(worker)
        proxy.hang()
        os.kill(pool_process, signal.SIGKILL)  # as the out-of-memory killer does
        wait_for(lambda: f"pid:{pool_process} exited" in worker.log(), timeout=10, what="the worker to see it die")
        # On a connection of its own: one kept in the pool may have been cut
        # by an earlier test's restart of RabbitMQ (tests/test_faults.py).
        with celery_app.connection_for_write() as connection:
            pong = celery_app.control.ping(destination=[node], timeout=3, connection=connection)
        assert pong == [{node: {"ok": "pong"}}]
        wait_for(
            lambda: worker.log().count(f"run_task[{task['id']}] received") == 2,
            timeout=3,
            what="the worker to receive the message back",
        )
        # Its look at the task waits for the database meanwhile, and gives up.
        wait_for(lambda: "could not look at its task" in worker.log(), timeout=20, what="the look to give up")
        proxy.resume()
        stored = wait_for(
            lambda: Task.objects.filter(pk=task["id"], status="succeeded").first(),
            timeout=60,
            what="the task to run again and succeed",
        )
    assert stored.starts == 2  # the death counts, at the redelivered message's start
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]


def test_a_run_cut_short_by_the_database_runs_again_without_counting_a_start(private_stack) -> None:
    """Only a pool process's death counts toward TASK_MAX_STARTS. A run cut
    short by the database going away (the worker lives, and retries the
    task once the database is back) counted too: with one start allowed, the
    task failed as "Its worker process died once while running it"."""
    running = private_stack()
    with TcpProxy(*database_address()) as proxy:
        worker = running.start_worker(
            concurrency=1, TASK_MAX_STARTS="1", DATABASE_URL=proxy.url_for(running.worker_env["DATABASE_URL"])
        )
        alice = Account.sign_up(running.base_url)
        task = alice.queue("simulate", seconds=3)
        wait_for(lambda: Task.objects.filter(pk=task["id"], status="running").exists(), timeout=30, what="the start")
        proxy.pause()  # every connection reset: the run cannot write its end
        wait_for(
            lambda: f"task {task['id']}: database unavailable, retrying" in worker.log(),
            timeout=30,
            what="the run to be cut short",
        )
        proxy.resume()
        stored = wait_for(
            lambda: Task.objects.filter(pk=task["id"]).exclude(status="running").first(),
            timeout=60,
            what="the task to end",
        )
    assert (stored.status, stored.error, stored.starts) == ("succeeded", "", 1)
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]


def test_a_workload_that_loses_its_connection_on_every_run_still_ends(stack: Any) -> None:
    """Its connection is lost but the database is not away (a new connection
    is made at once): each run counts a start, so it ends after
    TASK_MAX_STARTS runs instead of running again for good."""
    alice = Account.sign_up(stack.base_url)
    task = alice.queue("ends_its_database_connection")
    stored = wait_for(
        lambda: Task.objects.filter(pk=task["id"], status="failed").first(),
        timeout=90,
        what="the task to fail",
        interval=0.2,
    )
    assert stored.starts == 3
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.failed"]


def test_a_worker_stopped_through_its_process_group_lets_its_task_finish(private_stack) -> None:
    """honcho and foreman stop a process by signalling its whole group: the
    worker's warm shutdown must not have its pool processes cut off by that
    same SIGTERM mid-task (and logged as errors)."""
    running = private_stack()
    worker = running.start_worker(concurrency=1)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=2)
        socket.events_until(lambda e: e["event"] == "task.started")
        worker.stop(signal.SIGTERM, timeout=30)  # to the group, as honcho does; SIGKILL after 30 s
        assert worker.popen.returncode == 0, worker.log()[-2000:]
        events = socket.events_until(terminal_for(task["id"]), timeout=10)
    assert events[-1]["event"] == "task.succeeded"
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]
    assert "ERROR" not in worker.log(), worker.log()[-2000:]


def test_tasks_queued_while_the_broker_is_away_are_relayed_once(stack: Any, private_stack) -> None:
    # The web process's broker is a closed port; the worker has the real one.
    # The session stack's worker shares the test database, so its housekeeper
    # may be the one that relays (to its own queue): it is started here so
    # that both always race, and both logs are read below.
    running = private_stack(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    running.start_worker(concurrency=2)
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        queued = [alice.queue("simulate", seconds=0) for _ in range(20)]  # each one a 202
        socket.events_until(until_all_finished([t["id"] for t in queued]), timeout=90)
    for task in queued:
        assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]
    assert Counter(Task.objects.filter(pk__in=[t["id"] for t in queued]).values_list("status", flat=True)) == {
        "succeeded": 20
    }
    # The web never reached a broker: every task was sent, once, by a relay.
    assert Task.objects.filter(pk__in=[t["id"] for t in queued], sent_at__isnull=True).count() == 0
    assert "relay: sent" in running.logs() + stack.logs()


def test_a_soft_time_limit_in_the_middle_of_a_query_fails_the_task_once(stack: Any) -> None:
    """The limit strikes inside pg_sleep: the failure must be written, not
    taken for the database being down (a retry that ran the task again)."""
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        task = alice.queue("sleeps_in_the_database", seconds=5)
        events = socket.events_until(terminal_for(task["id"]), timeout=30)
    assert events[-1]["event"] == "task.failed"
    assert events[-1]["task"]["error"] == "The task ran longer than its time limit of 1 s."
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.failed"]


@contextlib.contextmanager
def far_worker_running_a_task(private_stack: Any) -> Iterator[tuple[TcpProxy, Any, Any, Any, dict[str, Any]]]:
    """A worker whose RabbitMQ connection goes through a proxy (a worker on
    another machine) running a 4 s ``simulate`` task of alice's, her socket
    open: (the proxy, the stack, that worker, the socket, the task)."""
    from django.conf import settings

    broker = urlparse(settings.CELERY_BROKER_URL)
    with TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as proxy:
        running = private_stack()
        far = running.start_worker(concurrency=1, CELERY_BROKER_URL=proxy.url_for(settings.CELERY_BROKER_URL))
        alice = Account.sign_up(running.base_url)
        with alice.socket() as socket:
            task = alice.queue("simulate", seconds=4)
            socket.events_until(lambda e: e["event"] == "task.started")
            yield proxy, running, far, socket, task


def test_a_worker_cut_off_from_the_broker_mid_task_finishes_it_once_and_says_so_calmly(private_stack) -> None:
    """A worker on another machine loses its RabbitMQ connection while its
    task runs: the task runs on and ends once, its owner hears of it once,
    and the redelivered message is dropped by another worker. The ack that
    can no longer be sent is a WARNING saying why, not kombu's CRITICAL
    with a traceback (an operator's pager)."""
    with far_worker_running_a_task(private_stack) as (proxy, running, far, socket, task):
        near = running.start_worker(concurrency=1)
        proxy.pause()  # resets the far worker's connection; RabbitMQ hands its message to the near one
        wait_for(lambda: "Connection to broker lost" in far.log(), timeout=10, what="the far worker to notice")
        proxy.resume()
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
        # The redelivered copy reaches the near worker, which leaves the task to its
        # worker (sending the message back for half a lease, to either worker) and,
        # once it has ended, one of them drops it.
        dropped = f"task {task['id']} is finished, cancelled or running elsewhere; not running it"
        wait_for(lambda: dropped in near.log() + far.log(), timeout=30, what="the redelivered message dropped")
        assert f"run_task[{task['id']}] received" in near.log()
        wait_for(lambda: "Couldn't ack" in far.log(), timeout=10, what="the far worker's lost ack")
    assert events[-1]["event"] == "task.succeeded", events[-1]
    assert [e["event"] for e in events].count("task.succeeded") == 1
    assert kinds_for(task["id"]) == ["task.queued", "task.started", "task.succeeded"]
    assert Task.objects.get(pk=task["id"]).starts == 1
    assert f"run_task[{task['id']}] succeeded in" in far.log()  # it ran there, to its end
    lost_ack = next(line for line in far.log().splitlines() if "Couldn't ack" in line)
    assert '"level": "WARNING"' in lost_ack, lost_ack
    assert "Traceback" not in lost_ack
    assert "RabbitMQ delivers its message again" in lost_ack
    assert '"level": "CRITICAL"' not in far.log()
    assert "worker_cancel_long_running_tasks_on_connection_loss" not in far.log()  # Celery's warning


def test_a_worker_whose_clock_is_ahead_does_not_take_over_a_live_task(private_stack) -> None:
    """The lease is kept and read by the database's clock: a worker whose
    clock is ahead of the running worker's by more than a lease (5 s here,
    TASK_LEASE_SECONDS 3 s; 10 s by default) must not take the redelivered
    message of a live task for a dead worker's, and run it a second time."""
    with far_worker_running_a_task(private_stack) as (proxy, running, far, socket, task):
        ahead = running.start_worker(
            concurrency=1,
            WORKLOAD_MODULES="tests.workloads_for_tests,tests.skewed_clock",
            CLOCK_SKEW_SECONDS="5",
        )
        proxy.pause()  # the message goes back to RabbitMQ, and on to the worker that is ahead
        wait_for(lambda: f"run_task[{task['id']}] received" in ahead.log(), timeout=10, what="the redelivery")
        proxy.resume()
        events = socket.events_until(terminal_for(task["id"]), timeout=60)
    assert events[-1]["event"] == "task.succeeded", events[-1]
    assert Task.objects.get(pk=task["id"]).starts == 1, ahead.log()[-3000:]
    assert "task started" not in ahead.log()
    assert f"run_task[{task['id']}] succeeded in" in far.log()
