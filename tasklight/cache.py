"""Django's Redis cache, with one client and connection pool per process.

Django makes a new ``RedisCache`` for each thread or async context that uses
the cache, and each made its own client: under ASGI every request built a
client (redis-py reads its own package metadata from disk to do so) and a
connection pool, and opened a new TCP connection to Redis for its rate-limit
check (Django ticket #35651, open). This backend hands every ``RedisCache`` of
the process the same client for the same servers and options. redis-py's
pool is thread-safe and resets itself in a forked child.

Django's client also builds a ``redis.Redis`` object for every operation
(~4 % of the web process's CPU under load, docs/benchmarks.md): this one
keeps one per connection pool. A ``redis.Redis`` without a connection of its
own is thread-safe: each command borrows one from the pool.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusedRedisClient(RedisCacheClient):
    """Django's client, with one ``redis.Redis`` per connection pool."""

    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._redis_clients: dict[int, Any] = {}  # id(pool) -> redis.Redis

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._redis_clients.get(id(pool))
        if client is None:  # two threads may both make one: the last one stays
            client = self._redis_clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


_clients: dict[tuple[tuple[str, ...], str], RedisCacheClient] = {}
_clients_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    # Set by RedisCache.__init__ (not in django-stubs).
    _servers: list[str]
    _options: dict[str, Any]

    @cached_property
    def _cache(self) -> Any:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = ReusedRedisClient(self._servers, **self._options)
                client.get_client(write=True)  # makes its pool once, here, not raced
            return client

    @property
    def servers(self) -> list[str]:
        return self._servers

    def redis(self) -> Any:
        """The process's ``redis.Redis`` for writes, whose connection pool the
        rate limits share (tasklight/rate_limits.py)."""
        return self._cache.get_client(write=True)
