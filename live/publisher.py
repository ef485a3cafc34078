"""Pushes messages to the channel layer from any process: web or worker.

On Redis (channels_redis' pub/sub layer, Tasklight's layer whenever
CHANNEL_LAYER_URL is set) a group_send is one PUBLISH: it is made at once,
from the pushing thread, with a synchronous client (``_RedisPubSub``). That
saves a worker the hop to another thread on the way from its commit to the
socket (docs/benchmarks.md, "Where the notification latency goes").

Any other layer (embedded mode's SQLite layer, the in-memory layer of unit
tests) is async only: one long-lived event loop per process, in a daemon
thread, owns its connections. Calling ``async_to_sync(layer.group_send)`` per
message instead makes a new loop and a new Redis connection each time:
slower (STACK-NOTES), and the source of channels_redis' "Event loop is
closed" errors in workers.

Either way a thread's messages leave in the order it pushed them, and a
message the layer would not take is dropped: a task event is stored, and a
socket catches up from the database (docs/events.md). On Redis, Redis being
away is a WARNING when it starts and once a minute while it lasts, never one
per message; any other failure (a message that cannot be serialised) is an
ERROR with its traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Any

import redis
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from tasklight import channel_layer
from tasklight.channel_layer import LAYER_DOWN
from tasklight.logs import describe_error

logger = logging.getLogger(__name__)

# A Redis that does not answer holds up the pushing thread at most this long
# (the channel layer's and the cache's bound too: tasklight/channel_layer.py).
REDIS_TIMEOUT_SECONDS = channel_layer.REDIS_TIMEOUT_SECONDS
# After a PUBLISH timed out (a Redis host that does not answer at all, as a
# dead one behind a network does), nothing is published for this long, so
# that a worker is not held up on every event. A refused connection fails at
# once and trips nothing.
REDIS_SILENT_SECONDS = 10.0
# Connections a process publishes on at most; a PUBLISH takes a fraction of a
# millisecond, so threads rarely wait for one (up to the timeout above).
REDIS_CONNECTIONS = 4
# While publishing fails, a reminder is written this often at most (as
# tasklight/logs.py does for channels_redis' own lines).
OUTAGE_REPEAT_SECONDS = 60.0
# What a message that could not be published costs: the reason it is a
# WARNING and not an ERROR (docs/events.md, "Never lost").
DROPPED_MEANS = (
    "task events and inbox updates are stored and reach open sockets from the database at their next ping; "
    "progress and sign-out messages are not replayed"
)


class _RedisPubSub:
    """``RedisPubSubChannelLayer.group_send`` from the calling thread: the
    layer's own serialisation, its channel name for the group, one PUBLISH
    (tests/test_publisher.py checks a layer's group member receives it).
    redis-py's pool is thread-safe, bounded (REDIS_CONNECTIONS) and starts
    afresh in a forked process."""

    def __init__(self, layer: RedisPubSubChannelLayer, address: str, prefix: str) -> None:
        self._serialize = layer.serialize
        self._prefix = prefix
        pool = redis.BlockingConnectionPool.from_url(
            address,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_TIMEOUT_SECONDS,
            **channel_layer.redis_timeouts(),
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._lock = threading.Lock()
        self._silent_until = 0.0
        # Since when publishing fails (None: it works), how many messages were
        # dropped since, and when that was last said.
        self._failing_since: float | None = None
        self._dropped = 0
        self._said_at = 0.0
        self._cause = ""

    @classmethod
    def for_layer(cls, layer: Any) -> _RedisPubSub | None:
        """One for the default layer if it is Tasklight's one-host pub/sub
        layer (settings.CHANNEL_LAYERS); None for any other layer."""
        if not isinstance(layer, RedisPubSubChannelLayer):
            return None
        layers: dict[str, dict[str, Any]] = settings.CHANNEL_LAYERS
        config = layers["default"].get("CONFIG", {})
        hosts = config.get("hosts") or []
        if len(hosts) != 1 or not isinstance(hosts[0], dict) or "address" not in hosts[0]:
            return None
        return cls(layer, hosts[0]["address"], config.get("prefix", "asgi"))

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publishes, or drops the message while Redis is away: refused,
        reset, or not answering (then, for REDIS_SILENT_SECONDS, without
        asking it). An outage is written as one WARNING when it starts, one a
        minute at most while it lasts (how many messages it dropped), and one
        INFO when publishing works again, however many messages a busy
        process pushed meanwhile. Raises anything else (a message the layer
        cannot serialise): a bug, the caller's to log as an ERROR."""
        if self._silent_until:
            if time.monotonic() < self._silent_until:
                self._failed(None)
                return
            self._silent_until = 0.0
        payload = self._serialize(message)
        try:
            # channels_redis.pubsub.RedisPubSubLoopLayer._get_group_channel_name
            self._redis.publish(f"{self._prefix}__group__{group}", payload)
        except LAYER_DOWN as exc:
            if isinstance(exc, redis.TimeoutError):
                self._silent_until = time.monotonic() + REDIS_SILENT_SECONDS
            self._failed(exc)
            return
        if self._failing_since is not None:
            self._recovered()

    def _failed(self, error: BaseException | None) -> None:
        """One more message dropped: for ``error``, or (None) in a silence."""
        now = time.monotonic()
        with self._lock:
            self._dropped += 1
            if error is not None:
                self._cause = describe_error(error)
                if isinstance(error, redis.TimeoutError):
                    self._cause += f"; not asked again for {REDIS_SILENT_SECONDS:g} s"
            if self._failing_since is None:
                self._failing_since = self._said_at = now
                logger.warning(
                    "cannot publish to Redis (%s): messages are dropped until it answers again (%s)",
                    self._cause,
                    DROPPED_MEANS,
                )
            elif now - self._said_at >= OUTAGE_REPEAT_SECONDS:
                self._said_at = now
                logger.warning(
                    "still cannot publish to Redis after %.0f s (%s): %d message(s) dropped so far",
                    now - self._failing_since,
                    self._cause,
                    self._dropped,
                )

    def _recovered(self) -> None:
        with self._lock:
            if self._failing_since is None:
                return
            logger.info(
                "publishing to Redis again after %.0f s: %d message(s) were dropped meanwhile",
                time.monotonic() - self._failing_since,
                self._dropped,
            )
            self._failing_since, self._dropped = None, 0


class Publisher:
    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """As new. A forked process (Celery's prefork pool) calls it first:
        it inherits this object as its parent's threads left it, and a lock
        one of them held then (the pool deaths' thread pushes the event of
        the task it fails) stayed held in the child for good, which hung at
        its first push. The child makes its own Redis client at that push."""
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._direct: _RedisPubSub | None = None
        self._direct_known = False

    def push(self, group: str, message: dict[str, Any]) -> None:
        """Sends a group_send on Redis, else queues it; never raises."""
        direct = self._direct_publisher()
        if direct is not None:
            try:
                direct.group_send(group, message)
            except Exception:
                logger.exception("could not publish %s to %s", message.get("type"), group)
            return
        loop, queue = self._started()
        loop.call_soon_threadsafe(queue.put_nowait, (group, message))

    def forget_layer(self) -> None:
        """The next push looks at the default channel layer again."""
        self._direct_known = False

    def _direct_publisher(self) -> _RedisPubSub | None:
        if not self._direct_known:
            with self._lock:
                if not self._direct_known:
                    self._direct = _RedisPubSub.for_layer(get_channel_layer())
                    self._direct_known = True
        return self._direct

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every pushed message has been handed to the layer
        (on Redis each one was, before push returned)."""
        if self._pid != os.getpid() or self._loop is None or self._queue is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self._queue.join(), self._loop)
        try:
            future.result(timeout)
            return True
        except TimeoutError:
            future.cancel()
            return False

    def _started(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, dict[str, Any]]]]:
        # A forked process (Celery's prefork pool) inherits the object but not
        # the thread: start a fresh loop in each process that pushes.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
        assert self._loop is not None and self._queue is not None
        return self._loop, self._queue

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._queue = asyncio.Queue()
            ready.set()
            loop.run_until_complete(self._send_forever())

        threading.Thread(target=run, name="tasklight-publisher", daemon=True).start()
        ready.wait()
        self._loop, self._pid = loop, os.getpid()

    async def _send_forever(self) -> None:
        assert self._queue is not None
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS is not configured"
        while True:
            group, message = await self._queue.get()
            try:
                await layer.group_send(group, message)
            except Exception:
                logger.exception("could not publish %s to %s", message.get("type"), group)
            finally:
                self._queue.task_done()


publisher = Publisher()
os.register_at_fork(after_in_child=publisher.start_afresh)
# A worker process that exits right after a task must not drop its last event.
atexit.register(publisher.flush, 2.0)


@receiver(setting_changed)
def _layer_changed(*, setting: str, **kwargs: Any) -> None:
    # Tests swap CHANNEL_LAYERS; channels drops its layers then, and so do we.
    if setting == "CHANNEL_LAYERS":
        publisher.forget_layer()
