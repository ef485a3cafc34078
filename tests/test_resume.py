"""Notifications are never lost: resume after a disconnect, the seam between
replay and live events, a Redis restart, two ASGI servers, and the worker's
publisher under load. Real processes on PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import redis

from live.models import Event, EventStream

from .stack import Account, LiveSocket, terminal_for, until_all_finished, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


def stored_ids(username: str) -> list[int]:
    return list(Event.objects.filter(user__username=username).order_by("sequence").values_list("sequence", flat=True))


def event_ids(socket: LiveSocket) -> list[int]:
    return [f["id"] for f in socket.frames if f["type"] == "event"]


def catch_up(socket: LiveSocket, username: str, timeout: float = 30) -> None:
    """Pings until the socket holds the newest stored event. The server
    answers frames in turn, so a pong comes after everything a resume sent
    before it, and a ping makes it send whatever is stored and not yet sent."""
    newest = EventStream.objects.get(user__username=username).last_event_id
    deadline = time.monotonic() + timeout
    ping = 0
    while ping == 0 or max(event_ids(socket), default=0) < newest:
        assert time.monotonic() < deadline, f"socket stuck at {max(event_ids(socket), default=0)} of {newest}"
        ping += 1
        socket.ws.send(f'{{"type": "ping", "id": {ping}}}')
        while socket.next(timeout=10)["type"] != "pong":
            pass


def test_resume_after_a_disconnect_delivers_what_finished_meanwhile(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as socket:
        cursor = socket.hello["last_event_id"]
    tasks = [alice.queue("simulate", seconds=0) for _ in range(3)]
    wait_for(
        lambda: all(alice.http.get(f"/api/tasks/{t['id']}/").json()["status"] == "succeeded" for t in tasks),
        timeout=30,
        what="three tasks to finish",
    )
    with alice.socket() as socket:
        socket.ws.send(f'{{"type": "resume", "after": {cursor}}}')
        events = socket.events_until(until_all_finished([t["id"] for t in tasks]))
    succeeded = [e["task"]["id"] for e in events if e["event"] == "task.succeeded"]
    assert sorted(succeeded) == sorted(t["id"] for t in tasks)  # each once
    ids = [e["id"] for e in events]
    assert ids == list(range(cursor + 1, cursor + 10))  # in order, none missing, none twice
    over_rest = alice.http.get(f"/api/events/?after={cursor}").json()["results"]
    assert [(e["id"], e["event"], e["task"]["id"]) for e in over_rest] == [
        (e["id"], e["event"], e["task"]["id"]) for e in events
    ]


def test_the_seam_between_replay_and_live_events_loses_and_repeats_nothing(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    done = threading.Event()
    queued: list[dict[str, Any]] = []

    def keep_queueing() -> None:
        for _ in range(12):
            queued.append(alice.queue("simulate", seconds=0.05))
            time.sleep(0.05)  # pacing of the load, not a wait for a result
        done.set()

    producer = threading.Thread(target=keep_queueing)
    producer.start()
    wait_for(lambda: len(queued) >= 4, timeout=30, what="some tasks queued before resuming")
    with alice.socket() as socket:
        socket.ws.send('{"type": "resume", "after": 0}')  # replays while tasks keep finishing
        producer.join()
        socket.events_until(until_all_finished([t["id"] for t in queued]), timeout=60)
        catch_up(socket, alice.username)
    received, hello = event_ids(socket), socket.hello["last_event_id"]
    # Each event once. Those after hello come live in order from hello on;
    # the resume adds the older ones in order, after any live one that came
    # before the resume reached the server.
    assert sorted(received) == stored_ids(alice.username) == list(range(1, 12 * 3 + 1))
    assert [n for n in received if n <= hello] == list(range(1, hello + 1))
    assert [n for n in received if n > hello] == list(range(hello + 1, 12 * 3 + 1))


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False, capture_output=True)
    wait_for(
        lambda: subprocess.run(["redis-cli", "ping"], capture_output=True).returncode != 0,
        timeout=15,
        what="Redis to stop",
    )
    subprocess.run(REDIS_START, check=True)
    wait_for(lambda: redis.Redis().ping(), timeout=15, what="Redis to come back")


def test_a_redis_restart_loses_no_event(stack: Any) -> None:
    users = [Account.sign_up(stack.base_url) for _ in range(5)]
    with ExitStack() as open_sockets:
        sockets = [(user, open_sockets.enter_context(user.socket())) for user in users]
        try:
            for user in users:
                for _ in range(10):
                    user.queue("simulate", seconds=0.5)
            # Restart while tasks run: some events are published while Redis is away.
            wait_for(lambda: Event.objects.filter(kind="task.succeeded").exists(), timeout=30, what="tasks to run")
            restart_redis()
        finally:
            if subprocess.run(["redis-cli", "ping"], capture_output=True).returncode != 0:
                subprocess.run(REDIS_START, check=False)
        wait_for(lambda: _all_finished(users), timeout=120, what="all 50 tasks to finish")
        for user, socket in sockets:
            catch_up(socket, user.username)
            assert event_ids(socket) == stored_ids(user.username), user.username
            assert [f["event"] for f in socket.frames if f["type"] == "event"].count("task.succeeded") == 10


def _all_finished(users: list[Account]) -> bool:
    return all(
        [t["status"] for t in user.http.get("/api/tasks/?limit=50").json()["results"]] == ["succeeded"] * 10
        for user in users
    )


def test_one_user_on_two_asgi_servers_hears_every_event_on_both(private_stack) -> None:
    first = private_stack()
    second = private_stack()
    first.start_worker(concurrency=2)
    first.start_worker(concurrency=2)
    alice = Account.sign_up(first.base_url)
    with alice.socket(first.base_url) as one, alice.socket(second.base_url) as two:
        on_first = [alice.queue("simulate", seconds=0) for _ in range(10)]
        alice.http.base_url = httpx.URL(second.base_url)
        on_second = [alice.queue("simulate", seconds=0) for _ in range(10)]
        ids = [t["id"] for t in on_first + on_second]
        for socket in (one, two):
            socket.events_until(until_all_finished(ids), timeout=60)
            terminal = [f["task"]["id"] for f in socket.frames if f.get("event") == "task.succeeded"]
            assert sorted(terminal) == sorted(ids)
    assert event_ids(one)[: len(event_ids(two))] == event_ids(two)[: len(event_ids(one))]


def test_ten_thousand_events_from_one_worker_keep_redis_connections_bounded(private_stack) -> None:
    running = private_stack()
    worker = running.start_worker(concurrency=1)
    client = redis.Redis()
    baseline = int(client.info("clients")["connected_clients"])
    alice = Account.sign_up(running.base_url)
    peak = baseline
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, int(client.info("clients")["connected_clients"]))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with alice.socket() as socket:
            task = alice.queue("chatter", count=10_000)
            socket.events_until(terminal_for(task["id"]), timeout=120)
            progress = [f for f in socket.frames if f["type"] == "progress"]
    finally:
        stop.set()
        watcher.join()
    assert len(progress) == 10_000
    assert [f["task"]["progress"] for f in progress] == list(range(10_000))
    # The bound (docs/events.md): above the idle processes, the worker's
    # publisher (1); in the web process the socket's pub/sub layer (2: its
    # subscription and its pool), the web's own publisher (1) and the
    # rate-limit cache (1). None of it grows with the number of events.
    assert peak - baseline <= 5, (baseline, peak)
    log = worker.log()
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]
