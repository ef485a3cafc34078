"""One Redis connection pool per process for Django's cache.

Django makes a new ``RedisCache`` for each thread or async context that uses
the cache, and each made its own connection pool: under ASGI every request
opened a new TCP connection to Redis for its rate-limit check (Django ticket
#35651, open). This pool class hands every ``RedisCache`` of the process the
same pool for the same address and options. redis-py's pool is thread-safe
and resets itself in a forked child.
"""

from __future__ import annotations

import threading
from typing import Any

from redis import ConnectionPool

_shared: dict[tuple[str, str], ConnectionPool] = {}
_shared_lock = threading.Lock()


class SharedConnectionPool(ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        key = (url, repr(sorted(kwargs.items())))
        with _shared_lock:
            pool = _shared.get(key)
            if pool is None:
                pool = _shared[key] = super().from_url(url, **kwargs)
            return pool
