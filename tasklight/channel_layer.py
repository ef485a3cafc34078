"""The channel layer on Redis: channels_redis' pub/sub layer, bounded in time
and without the queue it left behind for each channel it could not subscribe.

Loaded by the LOGGING setting (tasklight/logs.py imports ``LAYER_DOWN``)
while Django configures itself: nothing here may import Django's models or
settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from channels_redis import pubsub
from channels_redis.utils import _wrap_close

# What a channel layer on a Redis that went away raises: Redis refusing the
# connection, resetting it (restarted, or the connection killed) or not
# answering (redis-py's errors, and the OSError beneath them; TimeoutError,
# asyncio's included, is one). A dependency down, never a bug of ours: a
# reason to tell a socket to try again, a WARNING rather than an ERROR.
LAYER_DOWN = (redis.RedisError, OSError)

# How long any wait on Redis lasts at most: a connection, a command, a
# reply (docs/operations.md, "Redis that does not answer"). A Redis that
# answers at all answers in a millisecond; one that does not (a host that
# died, a network partition) accepts or drops connections and answers
# nothing, and without a bound every request, socket handshake and worker
# that touches it would wait with it. redis-py 8 bounds waits at 5 s by
# default, older ones not at all; channels_redis and Django's cache pass
# no timeout of their own: settings.py gives both this one explicitly.
REDIS_TIMEOUT_SECONDS = 2.0


def redis_timeouts() -> dict[str, float]:
    """redis-py's connection options for REDIS_TIMEOUT_SECONDS."""
    return {"socket_connect_timeout": REDIS_TIMEOUT_SECONDS, "socket_timeout": REDIS_TIMEOUT_SECONDS}


class _Shard(pubsub.RedisSingleShardConnection):
    """channels_redis' connection to one Redis, whose receive loop never
    reads while a subscribe or unsubscribe is reconnecting.

    Once the subscriptions' connection is lost (Redis restarted, or a
    socket's SUBSCRIBE found the connection reset), whoever uses it next
    connects it again: the receive loop, or a socket's handshake subscribing
    under the shard's lock. redis-py counts it connected as soon as the TCP
    connection is up, before its handshake has read Redis's replies, and
    channels_redis' loop, reading meanwhile, failed with asyncio's "read()
    called while another coroutine is already waiting for incoming data": an
    ERROR with a traceback, and no live event for a second. So the loop
    takes that lock before it reads whenever the connection is down or a
    subscribe or unsubscribe holds the lock, and connects under it itself;
    the rest of the time it reads without it, as upstream does (a subscribe
    on a connection that is up only writes)."""

    async def _do_receiving(self) -> None:
        # channels_redis.pubsub.RedisSingleShardConnection._do_receiving, plus the lock.
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    connection = self._pubsub.connection
                    if self._lock.locked() or connection is None or not connection.is_connected:
                        async with self._lock:
                            await self._pubsub.connect()
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                pubsub.logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
    _shards: list[pubsub.RedisSingleShardConnection]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [_Shard(shard.host, self) for shard in self._shards]

    async def _subscribe_to_channel(self, channel: str) -> None:
        try:
            await super()._subscribe_to_channel(channel)
        except BaseException:
            # channels_redis makes the channel's receive queue before it
            # subscribes: a subscription that failed (Redis away, or the
            # caller's deadline) left the queue behind for the life of the
            # process, one for each socket refused with 1013 (twice, with
            # the consumer's second try) and each /readyz that timed out.
            self.channels.pop(channel, None)
            raise


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    """channels_redis' ``RedisPubSubChannelLayer`` (the same name, which
    /readyz and the About page show), whose per-loop layer forgets a
    channel it could not subscribe."""

    def _get_layer(self) -> Any:
        # channels_redis.pubsub.RedisPubSubChannelLayer._get_layer, with our loop layer.
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer
