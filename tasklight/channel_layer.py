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


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
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
