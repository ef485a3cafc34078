"""The publisher against the real Redis: what it PUBLISHes from the pushing
thread is what channels_redis' pub/sub layer delivers to a group's members."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

import live.publisher
from live.publisher import REDIS_CONNECTIONS, REDIS_TIMEOUT_SECONDS, Publisher
from workloads.registry import MAX_INTEGER, MIN_INTEGER

from .proxy import TcpProxy
from .stack import fork_holding

REDIS_URL = "redis://127.0.0.1:6379/0"


def pubsub_layer(address: str, prefix: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": address, "max_connections": 10}], "prefix": prefix},
        }
    }


@pytest.fixture
def redis_layer(settings: Any) -> RedisPubSubChannelLayer:
    settings.CHANNEL_LAYERS = pubsub_layer(REDIS_URL, f"tl-publisher-{uuid.uuid4().hex[:8]}")
    layer = get_channel_layer()
    assert isinstance(layer, RedisPubSubChannelLayer)
    return layer


async def test_pushes_on_redis_reach_a_member_of_the_group_in_order(redis_layer: RedisPubSubChannelLayer) -> None:
    publisher = Publisher()
    channel = await redis_layer.new_channel()
    await redis_layer.group_add("user-7", channel)
    try:
        messages = [{"type": "live.event", "frame": {"id": n, "task": {"id": f"t-{n}"}}} for n in range(50)]

        def push_all() -> None:
            for message in messages:
                publisher.push("user-7", message)

        await sync_to_async(push_all)()
        received = [await redis_layer.receive(channel) for _ in messages]
    finally:
        await redis_layer.group_discard("user-7", channel)
        await redis_layer.flush()
    assert received == messages
    # Sent from the pushing thread: no loop thread was started for them.
    assert publisher._loop is None


async def test_the_integers_a_task_may_hold_reach_a_member_of_the_group(redis_layer: RedisPubSubChannelLayer) -> None:
    """The bounds of workloads.registry (MIN_INTEGER, MAX_INTEGER) are what
    the layer carries: one past them cannot be packed at all."""
    publisher = Publisher()
    channel = await redis_layer.new_channel()
    await redis_layer.group_add("user-6", channel)
    message = {"type": "live.event", "frame": {"id": 1, "task": {"result": [MIN_INTEGER, MAX_INTEGER]}}}
    try:
        await sync_to_async(publisher.push)("user-6", message)
        received = await redis_layer.receive(channel)
    finally:
        await redis_layer.group_discard("user-6", channel)
        await redis_layer.flush()
    assert received == message
    for past in (MIN_INTEGER - 1, MAX_INTEGER + 1):
        with pytest.raises(OverflowError):
            redis_layer.serialize({"type": "live.event", "frame": {"task": {"result": past}}})


async def test_other_groups_hear_nothing(redis_layer: RedisPubSubChannelLayer) -> None:
    publisher = Publisher()
    channel = await redis_layer.new_channel()
    await redis_layer.group_add("user-8", channel)
    try:
        await sync_to_async(publisher.push)("user-9", {"type": "live.event", "frame": {"id": 1}})
        await sync_to_async(publisher.push)("user-8", {"type": "live.event", "frame": {"id": 2}})
        first = await redis_layer.receive(channel)
    finally:
        await redis_layer.group_discard("user-8", channel)
        await redis_layer.flush()
    assert first["frame"] == {"id": 2}


def test_a_push_to_an_unreachable_redis_is_logged_and_returns(settings: Any, caplog: Any) -> None:
    settings.CHANNEL_LAYERS = pubsub_layer("redis://127.0.0.1:1/0", "tl-publisher-nowhere")
    publisher = Publisher()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="live.publisher"):
        publisher.push("user-1", {"type": "live.event", "frame": {"id": 1}})  # does not raise
    assert time.monotonic() - started < REDIS_TIMEOUT_SECONDS + 1
    [record] = caplog.records
    assert record.levelname == "WARNING" and record.exc_info is None
    assert record.getMessage().startswith("cannot publish to Redis (ConnectionError: Error 111 connecting to")
    assert publisher.flush(1.0)


def test_redis_away_is_one_warning_when_it_starts_one_a_minute_and_one_info_when_it_is_back(
    settings: Any, caplog: Any, monkeypatch: Any
) -> None:
    """Every message pushed while Redis was away wrote an ERROR with a
    traceback ("could not publish live.event to user-1"): a worker busy with
    progress frames wrote hundreds a second, for the whole outage. A message
    that is not Redis's fault still is an ERROR, outage or not."""
    now = [1000.0]
    monkeypatch.setattr(live.publisher.time, "monotonic", lambda: now[0])
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings.CHANNEL_LAYERS = pubsub_layer(proxy.url_for(REDIS_URL), f"tl-publisher-{uuid.uuid4().hex[:8]}")
        publisher = Publisher()
        with caplog.at_level(logging.INFO, logger="live.publisher"):
            publisher.push("user-1", {"type": "live.progress", "frame": {"id": 0}})
            assert caplog.records == [] and proxy.forwarded == 1
            proxy.pause()
            for second in range(150):  # two and a half minutes of progress, ten messages a second
                now[0] = 1000.0 + second
                for n in range(10):
                    publisher.push("user-1", {"type": "live.progress", "frame": {"id": n}})
            publisher.push("user-1", {"type": "live.event", "frame": {"task": {"result": MAX_INTEGER + 1}}})
            proxy.resume()
            now[0] = 1200.0
            publisher.push("user-1", {"type": "live.progress", "frame": {"id": 1}})
            publisher.push("user-1", {"type": "live.progress", "frame": {"id": 2}})
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING", "ERROR", "INFO"], lines
    assert lines[0][1].startswith("cannot publish to Redis (ConnectionError: ")
    assert lines[0][1].endswith(
        "messages are dropped until it answers again (task events and inbox updates are stored and reach open "
        "sockets from the database at their next ping; progress and sign-out messages are not replayed)"
    )
    assert lines[1][1].startswith("still cannot publish to Redis after 60 s (ConnectionError: ")
    assert lines[1][1].endswith("601 message(s) dropped so far")
    assert lines[2][1].startswith("still cannot publish to Redis after 120 s (")
    assert lines[2][1].endswith("1201 message(s) dropped so far")
    assert lines[3][1] == "could not publish live.event to user-1"  # msgpack's OverflowError: a bug, not Redis
    assert caplog.records[3].exc_info is not None
    assert lines[4][1] == "publishing to Redis again after 200 s: 1500 message(s) were dropped meanwhile"
    assert all(record.exc_info is None for record in caplog.records if record.levelname != "ERROR")


async def test_a_layer_that_is_not_redis_gets_its_messages_from_the_loop_thread(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    assert layer is not None
    publisher = Publisher()
    channel = await layer.new_channel()
    await layer.group_add("user-3", channel)
    await sync_to_async(publisher.push)("user-3", {"type": "live.event", "frame": {"id": 3}})
    assert publisher._loop is not None
    # Handed to the layer by the loop thread; read only then (the in-memory
    # layer's queues belong to this test's loop and do not wake across threads).
    assert await sync_to_async(publisher.flush)(5.0)
    assert (await layer.receive(channel))["frame"] == {"id": 3}


async def test_many_threads_publishing_at_once_share_a_few_connections(redis_layer: RedisPubSubChannelLayer) -> None:
    publisher = Publisher()
    channel = await redis_layer.new_channel()
    await redis_layer.group_add("user-5", channel)
    try:
        with ThreadPoolExecutor(max_workers=16) as threads:
            pushes = [
                threads.submit(publisher.push, "user-5", {"type": "live.event", "frame": {"id": n}}) for n in range(400)
            ]
            for push in pushes:
                push.result()
        received = {(await redis_layer.receive(channel))["frame"]["id"] for _ in range(400)}
    finally:
        await redis_layer.group_discard("user-5", channel)
        await redis_layer.flush()
    assert received == set(range(400))
    direct = publisher._direct_publisher()
    assert direct is not None
    pool = direct._redis.connection_pool
    assert len(pool._connections) <= REDIS_CONNECTIONS


def test_a_redis_that_does_not_answer_holds_up_one_push_then_none_for_a_while(
    settings: Any, caplog: Any, monkeypatch: Any
) -> None:
    silence = 1.0
    monkeypatch.setattr(live.publisher, "REDIS_SILENT_SECONDS", silence)
    with TcpProxy("127.0.0.1", 6379) as proxy:
        settings.CHANNEL_LAYERS = pubsub_layer(proxy.url_for(REDIS_URL), "tl-publisher-silent")
        publisher = Publisher()
        proxy.hang()  # takes the connection, never answers
        with caplog.at_level(logging.INFO, logger="live.publisher"):
            started = time.monotonic()
            publisher.push("user-1", {"type": "live.event", "frame": {"id": 1}})
            first = time.monotonic() - started
            started = time.monotonic()
            for n in range(2, 202):
                publisher.push("user-1", {"type": "live.event", "frame": {"id": n}})
            dropped = time.monotonic() - started
            while_silent = [(record.levelname, record.getMessage()) for record in caplog.records]
            # Redis answers again: after the silence the next push goes through.
            proxy.resume()
            time.sleep(max(0.0, silence - (time.monotonic() - started)) + 0.1)  # the silence's own clock
            publisher.push("user-1", {"type": "live.event", "frame": {"id": 202}})
    assert REDIS_TIMEOUT_SECONDS - 0.5 < first < REDIS_TIMEOUT_SECONDS + 1  # waited out the timeout once
    assert dropped < 0.5  # and not again: 200 pushes dropped at once
    # One warning for the silence, none per dropped message.
    assert len(while_silent) == 1, while_silent
    assert while_silent[0][0] == "WARNING"
    assert while_silent[0][1].startswith(
        "cannot publish to Redis (TimeoutError: Timeout reading from socket; not asked again for 1 s): "
    ), while_silent
    last = caplog.records[-1]
    assert (last.levelname, last.getMessage()) == (
        "INFO",
        "publishing to Redis again after 1 s: 201 message(s) were dropped meanwhile",
    )


def test_a_process_forked_while_a_thread_held_the_publishers_lock_still_pushes() -> None:
    # A worker's main process pushes events from a thread (the pool deaths'
    # thread, for a task it fails) and forks pool processes. Before, a fork
    # while that thread held the publisher's lock left the lock held in the
    # new process, which hung at its first push, for good.
    seen = fork_holding(
        "publisher._lock",
        # forget_layer: the next push looks at the layer again, under the lock.
        setup="from live.publisher import publisher\npublisher.forget_layer()",
        child="publisher.push('tasklight-test-forked', {'type': 'test.message'})\n"
        "os._exit(0 if publisher.flush(5.0) else 1)",
    )
    assert seen == {"ended": True, "exit_code": 0}
