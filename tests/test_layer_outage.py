"""A web process cut off from Redis, its channel layer: a socket it cannot
subscribe is told to try again (close 1013), never answered with a 500, and
the client that comes back once Redis is back misses nothing. Redis "goes
down" behind a TCP proxy of the test's own (tests/proxy.py): the machine's
Redis keeps serving the other suites, and a second web process and the
worker reach it directly, as other machines of a deployment would."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from live.consumers import LAYER_WAIT_SECONDS, once_more_if_down
from live.models import Event
from tasklight.channel_layer import LAYER_DOWN, REDIS_TIMEOUT_SECONDS, RedisPubSubChannelLayer, redis_timeouts

from .proxy import TcpProxy
from .stack import HTTP_TIMEOUT, PASSWORD, Account, LiveSocket, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

TASKLIGHT = Path(sys.executable).parent / "tasklight"
REFUSED = "refused for now (closed with 1013), the channel layer is unavailable"


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    target = urlsplit(os.environ["CHANNEL_LAYER_URL"])
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy


def cut_off_and_direct(private_stack: Any, proxy: TcpProxy) -> tuple[Any, Any]:
    """A web process that reaches Redis through the proxy, and one (with a
    worker) that reaches it directly, on the same queue and database."""
    cut_off = private_stack(CHANNEL_LAYER_URL=proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
    direct = private_stack()
    direct.start_worker(concurrency=1)
    return cut_off, direct


def close_code_of_a_handshake(base_url: str, token: str, timeout: float = 10) -> int | None:
    """The close code of a socket that is accepted and closed at once."""
    url = base_url.replace("http", "ws", 1) + "/ws/"
    with (
        connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=timeout) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=timeout)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


def stored_events(username: str) -> int:
    return Event.objects.filter(user__username=username).count()


def events_until_pong(socket: LiveSocket, ping_id: str) -> list[int]:
    socket.ws.send(json.dumps({"type": "ping", "id": ping_id}))
    ids = []
    while (frame := socket.next(timeout=30))["type"] != "pong":
        if frame["type"] == "event":
            ids.append(frame["id"])
    return ids


def tasklight_wait(base_url: str, token: str, task_id: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """``tasklight wait TASK_ID`` against ``base_url``, started; its stderr goes to the file returned."""
    environment = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TASKLIGHT_URL": base_url,
        "TASKLIGHT_TOKEN": token,
    }
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        waiting = subprocess.Popen(
            [str(TASKLIGHT), "wait", task_id], stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment
        )
    return waiting, stderr_path


def test_a_socket_opened_while_redis_is_cut_off_is_told_to_try_again_and_misses_nothing(
    private_stack, redis_proxy: TcpProxy
) -> None:
    """The handshake was answered with a 500, and uvicorn logged an ERROR
    traceback ("Exception in ASGI application"). A socket already open stays
    open and catches up; a new one, once Redis is back, resumes."""
    cut_off, direct = cut_off_and_direct(private_stack, redis_proxy)
    alice = Account.sign_up(direct.base_url)
    with alice.socket(cut_off.base_url) as already_open:
        redis_proxy.pause()
        task = alice.queue("simulate", seconds=0)  # on the other web process and the worker
        wait_for(lambda: stored_events(alice.username) == 3, timeout=30, what="the task to finish")
        assert close_code_of_a_handshake(cut_off.base_url, alice.token) == 1013
        assert close_code_of_a_handshake(cut_off.base_url, alice.token) == 1013
        # The layer's own loop finds its connection gone (it polls every 0.1 s;
        # on a fast machine the lines above take less).
        wait_for(
            lambda: "Unexpected exception in receive task" in cut_off.web.log(),
            timeout=10,
            what="the layer's receive loop to find Redis gone",
        )
        redis_proxy.resume()
        # The open socket heard none of it live; its next ping brings it all.
        assert events_until_pong(already_open, "after the outage") == [1, 2, 3]

    with alice.socket(cut_off.base_url) as again:
        assert again.hello["last_event_id"] == 3
        again.ws.send(json.dumps({"type": "resume", "after": 0}))
        events = again.events_until(lambda frame: frame["id"] == 3, timeout=30)
        assert [(frame["id"], frame["task"]["id"]) for frame in events] == [(n, task["id"]) for n in (1, 2, 3)]

    log = cut_off.web.log()
    assert "Exception in ASGI application" not in log and "500 Internal Server Error" not in log, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if REFUSED in line["message"]]
    assert len(refusals) == 2, log
    assert all(line["level"] == "WARNING" and line["logger"] == "live.consumers" for line in refusals)
    assert all("ConnectionError" in line["message"] for line in refusals)  # the cause, named
    # The layer's own loop, which lost the open socket's subscription, said
    # so once (it wrote an ERROR traceback every second of the outage).
    assert [line for line in lines if line["level"] == "ERROR"] == []
    from_the_layer = [line for line in lines if line["logger"] == "channels_redis.pubsub"]
    assert [line["message"].split(":")[0] for line in from_the_layer] == ["Unexpected exception in receive task"]
    assert from_the_layer[0]["level"] == "WARNING" and "cannot reach Redis" in from_the_layer[0]["message"]


def test_tasklight_wait_rides_out_redis_being_cut_off(private_stack, redis_proxy: TcpProxy, tmp_path: Path) -> None:
    """Told to try again (1013) before its first hello, the command exited 3
    ("connection closed (1013)"; with the 500 before it, "the WebSocket
    handshake was refused (HTTP 500)"). Now it tries again, within the
    minute it gives any lost connection, and prints the result."""
    cut_off, direct = cut_off_and_direct(private_stack, redis_proxy)
    alice = Account.sign_up(direct.base_url)
    task = alice.queue("simulate", seconds=2)
    redis_proxy.pause()
    waiting, stderr_path = tasklight_wait(cut_off.base_url, alice.token, task["id"], tmp_path)
    try:
        wait_for(lambda: REFUSED in cut_off.web.log(), timeout=30, what="the command's socket to be refused")
        wait_for(lambda: stored_events(alice.username) == 3, timeout=30, what="the task to finish")
        assert waiting.poll() is None, stderr_path.read_text()
        redis_proxy.resume()
        stdout, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr_path.read_text()
    assert json.loads(stdout) == {"slept": 2}


def timed_close_code(base_url: str, token: str) -> tuple[int | None, float]:
    started = time.monotonic()
    return close_code_of_a_handshake(base_url, token, timeout=120), time.monotonic() - started


def test_sockets_opened_while_redis_does_not_answer_are_told_to_try_again_within_seconds(
    private_stack, redis_proxy: TcpProxy
) -> None:
    """A Redis that takes connections and answers nothing (a host that died,
    a network partition). channels_redis makes every subscription of a
    process on one connection, one at a time: each handshake waited for the
    ones before it, and for its own second try, redis-py's 5 s each. Of five
    sockets opened at once on a web process that had yet to reach Redis,
    the first was told to try again after 15 s, the fifth after 55 s, and
    more at once waited longer still. Now each is told within seconds, and
    all are served once Redis answers again."""
    direct = private_stack()
    alice = Account.sign_up(direct.base_url)
    redis_proxy.hang()
    cut_off = private_stack(CHANNEL_LAYER_URL=redis_proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda _: timed_close_code(cut_off.base_url, alice.token), range(5)))
    assert [code for code, _ in answers] == [1013] * 5, answers
    # The token's cache (on the same Redis) and the layer's deadline, not a queue.
    bound = REDIS_TIMEOUT_SECONDS + LAYER_WAIT_SECONDS + 2
    assert max(seconds for _, seconds in answers) < bound, answers

    redis_proxy.resume()
    with alice.socket(cut_off.base_url) as again:
        assert again.hello["last_event_id"] == 0
        task = alice.queue("simulate", seconds=0)
        direct.start_worker(concurrency=1)
        events = again.events_until(lambda frame: frame["event"] == "task.succeeded", timeout=30)
        assert [frame["task"]["id"] for frame in events] == [task["id"]] * 3
    refusals = [line for line in cut_off.web.log().splitlines() if REFUSED in line]
    assert len(refusals) == 5 and all("no answer within" in line or "Timeout" in line for line in refusals)


async def test_a_channel_the_layer_could_not_subscribe_leaves_nothing_behind(redis_proxy: TcpProxy) -> None:
    """channels_redis makes a channel's receive queue before it subscribes
    the channel, and kept it when the subscription failed: each socket
    refused with 1013 left two in the web process (the consumer tries twice)
    for as long as it ran, each /readyz that timed out one."""
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": redis_proxy.url_for(os.environ["CHANNEL_LAYER_URL"]), **redis_timeouts()}],
        prefix=f"tl-outage-{os.getpid()}",
    )
    kept = await layer.new_channel()
    channels = layer._get_layer().channels
    try:
        redis_proxy.pause()  # refused and reset: fails at once
        # A SUBSCRIBE is only written: one written before the reset arrived would go through.
        wait_for(lambda: redis_proxy.live_connections == 0, timeout=10, what="the proxy to reset its connections")
        for _ in range(20):
            with pytest.raises(LAYER_DOWN):
                await once_more_if_down(layer.new_channel)
        assert list(channels) == [kept]
        redis_proxy.resume()
        redis_proxy.hang()  # answers nothing: the caller's deadline ends the wait
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await layer.new_channel()
        assert list(channels) == [kept]
    finally:
        redis_proxy.resume()
        await layer.flush()


async def test_the_layer_never_reads_while_a_socket_subscribing_reconnects_it(
    redis_proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the subscriptions' connection was lost, the next socket to
    subscribe connected it again, and redis-py counts a connection up before
    its handshake has read Redis's replies: channels_redis' receive loop,
    reading meanwhile, failed with "read() called while another coroutine is
    already waiting for incoming data", an ERROR with a traceback (seen in
    CI on a fast machine, where Redis came back before the loop had noticed
    it gone). Here the handshake is held for its whole 2 s by a Redis that
    answers nothing, so the loop wakes during it every time."""
    caplog.set_level(logging.WARNING, logger="channels_redis.pubsub")
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": redis_proxy.url_for(os.environ["CHANNEL_LAYER_URL"]), **redis_timeouts()}],
        prefix=f"tl-reconnect-{os.getpid()}",
    )
    kept = await layer.new_channel()
    try:
        redis_proxy.hang()  # a new connection is taken and never answered: its handshake waits
        # Lost as a socket's SUBSCRIBE on a reset connection loses it.
        await layer._get_layer()._shards[0]._pubsub.connection.disconnect()
        with pytest.raises(LAYER_DOWN):
            await layer.new_channel()  # connects again; its handshake times out after REDIS_TIMEOUT_SECONDS
        redis_proxy.resume()
        await once_more_if_down(layer.new_channel)  # Redis is back: connected and subscribed again
        await layer.send(kept, {"type": "after.the.outage"})
        async with asyncio.timeout(10):
            assert await layer.receive(kept) == {"type": "after.the.outage"}
    finally:
        redis_proxy.resume()
        await layer.flush()
    from_the_layer = [record for record in caplog.records if record.name == "channels_redis.pubsub"]
    not_an_outage = [
        record.getMessage() + repr(record.exc_info and record.exc_info[1])
        for record in from_the_layer
        if not (record.exc_info and isinstance(record.exc_info[1], LAYER_DOWN))
    ]
    assert not_an_outage == []


def test_tasklight_wait_rides_out_a_redis_that_does_not_answer(
    private_stack, redis_proxy: TcpProxy, tmp_path: Path
) -> None:
    """On a web process that had yet to reach Redis when it stopped
    answering, the command's handshake took 15 s to be told 1013, past the
    10 s it waits for one: it exited 3 ("timed out") before Redis was back.
    Now it is told within seconds, tries again, and prints the result."""
    direct = private_stack()
    direct.start_worker(concurrency=1)
    alice = Account.sign_up(direct.base_url)
    task = alice.queue("simulate", seconds=0)
    wait_for(lambda: stored_events(alice.username) == 3, timeout=30, what="the task to finish")
    redis_proxy.hang()
    cut_off = private_stack(CHANNEL_LAYER_URL=redis_proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
    waiting, stderr_path = tasklight_wait(cut_off.base_url, alice.token, task["id"], tmp_path)
    try:
        wait_for(lambda: REFUSED in cut_off.web.log(), timeout=60, what="the command's socket to be refused")
        assert waiting.poll() is None, stderr_path.read_text()
        redis_proxy.resume()
        stdout, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr_path.read_text()
    assert json.loads(stdout) == {"slept": 0}


def test_a_worker_whose_redis_does_not_answer_runs_its_tasks_and_says_so_once(
    private_stack, redis_proxy: TcpProxy
) -> None:
    """Its first PUBLISH waits 2 s, then it publishes nothing for 10 s: the
    tasks run on, their events are stored and reach the socket at its next
    ping, and SIGTERM stops the worker as it would otherwise. Its log said
    "could not publish" as an ERROR with a traceback for each message."""
    web = private_stack()
    redis_proxy.hang()
    worker = web.start_worker(concurrency=1, CHANNEL_LAYER_URL=redis_proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
    alice = Account.sign_up(web.base_url)
    with alice.socket(web.base_url) as socket:
        for _ in range(5):
            alice.queue("simulate", seconds=0)
        wait_for(lambda: stored_events(alice.username) == 15, timeout=60, what="the tasks to finish")
        assert events_until_pong(socket, "after the tasks") == list(range(1, 16))
    stopped = time.monotonic()
    worker.stop(signal.SIGTERM, timeout=30)
    assert worker.popen.returncode == 0 and time.monotonic() - stopped < 15

    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
    from_the_publisher = [line for line in lines if line["logger"] == "live.publisher"]
    assert len(from_the_publisher) == 1, from_the_publisher
    assert from_the_publisher[0]["level"] == "WARNING"
    assert from_the_publisher[0]["message"].startswith("cannot publish to Redis (TimeoutError: ")


def test_a_token_whose_cache_entry_could_not_be_dropped_is_refused_once_redis_is_back(
    private_stack, redis_proxy: TcpProxy
) -> None:
    """A change that revokes a token drops its cache entry twice: inside the
    transaction (a failure there rolls the change back: 503, nothing
    changed) and once it has committed, for a request on another process
    that read the row in between and cached it. When that second drop
    failed (Redis gone at the commit), the web process answered 503 for a
    change it had made, and the other process accepted the token from the
    cache for TOKEN_CACHE_SECONDS (300 s) after Redis came back. Now the
    failed drop is kept and tried again until Redis takes it.

    Real processes: an admin deletes alice on the web process cut off from
    Redis; her row is locked by this test, so the deletion waits after her
    token's first drop, while a request on the other process caches the token
    again; then Redis goes away, the lock is let go and the deletion commits."""
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    cut_off, direct = cut_off_and_direct(private_stack, redis_proxy)
    alice = Account.sign_up(direct.base_url)
    assert alice.http.get("/api/auth/me/").status_code == 200  # cached
    root = Account.sign_up(direct.base_url)  # its password hashed as the web process hashes it
    User.objects.filter(username=root.username).update(is_staff=True, is_superuser=True)
    admin = httpx.Client(base_url=cut_off.base_url, timeout=HTTP_TIMEOUT)
    admin.get("/admin/login/")
    logged_in = admin.post(
        "/admin/login/",
        data={"username": root.username, "password": PASSWORD, "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
    )
    assert logged_in.status_code == 302, logged_in.text
    alice_id = User.objects.get(username=alice.username).pk

    def delete_alice() -> httpx.Response:
        return admin.post(
            f"/admin/auth/user/{alice_id}/delete/",
            data={"post": "yes", "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
        )

    def waiting_on_a_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return cursor.fetchone()[0] > 0

    with ThreadPoolExecutor(1) as pool:
        with transaction.atomic():
            User.objects.select_for_update().get(pk=alice_id)
            deleting = pool.submit(delete_alice)
            wait_for(waiting_on_a_lock, timeout=30, what="the deletion to wait for alice's row")
            # Her token's entry was dropped; a request on the other process caches it again.
            assert alice.http.get("/api/auth/me/").status_code == 200
            redis_proxy.pause()
        deleted = deleting.result(timeout=60)
    assert not User.objects.filter(pk=alice_id).exists()
    assert deleted.status_code == 302, deleted.text  # was a 503 page: the change was made all the same
    redis_proxy.resume()
    wait_for(
        lambda: alice.http.get("/api/auth/me/").status_code == 401,
        timeout=10,
        what="the other web process to refuse the deleted user's token",
    )
    assert httpx.get(f"{cut_off.base_url}/api/auth/me/", headers=alice.http.headers).status_code == 401
    log = [json.loads(line) for line in cut_off.web.log().splitlines() if line.startswith("{")]
    assert [line for line in log if line["level"] in ("ERROR", "CRITICAL")] == []
