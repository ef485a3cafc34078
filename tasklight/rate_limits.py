"""Per-user rate limits, checked and counted in one atomic step.

DRF's ``UserRateThrottle`` keeps each user's request times as a list in the
cache: it reads the list, decides, and writes it back. Requests of one user
in flight at once (threads of a web process, or several web processes) read
the same list, and each writes back its own: a burst of 80 POSTs at a limit
of 10 a minute queued 33 tasks (tests/test_rate_limit.py).

Here the ``limits`` library keeps the same rule - at most N requests in any
period, counted back from each request (a moving window) - and checks and
counts in one step: a Lua script on Redis, one round trip, atomic across
threads and web processes; in embedded mode (one web process, no Redis) its
in-memory storage, which locks per key. Its Redis connections are the
cache's (tasklight/cache.py), so a Redis that is down answers as the cache
does: 503 ``cache_unavailable`` (tasklight/errors.py).
"""

from __future__ import annotations

import functools
import math
import time

from django.core.cache import caches
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from tasklight.cache import SharedRedisCache

# DRF's rate format, which the settings use: "120/min" (the period's first letter counts).
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidRate(ValueError):
    pass


@functools.cache
def parse_rate(rate: str) -> RateLimitItem:
    """``"120/min"`` -> 120 per 60 s. Raises InvalidRate naming the format."""
    count, _, period = rate.partition("/")
    amount, seconds = int(count) if count.isdigit() else 0, PERIODS.get(period.strip()[:1].lower())
    if amount < 1 or seconds is None:
        raise InvalidRate(f"{rate!r} is not a rate such as 120/min (a count of 1 or more per s, min, hour or day)")
    return RateLimitItemPerSecond(amount, seconds)


# One per process and cache configuration (Django makes a cache object per thread).
_limiters: dict[tuple[str, ...], MovingWindowRateLimiter] = {}


def limiter() -> MovingWindowRateLimiter:
    """This process's limiter, on the default cache's Redis when it has one."""
    cache = caches["default"]
    servers = tuple(cache.servers) if isinstance(cache, SharedRedisCache) else ()
    key = (type(cache).__name__, cache.key_prefix, *servers)
    found = _limiters.get(key)
    if found is None:
        storage: Storage
        if isinstance(cache, SharedRedisCache):
            storage = RedisStorage(
                servers[0], connection_pool=cache.redis().connection_pool, key_prefix=f"{cache.key_prefix}-limits"
            )
        else:
            storage = MemoryStorage()
        found = _limiters[key] = MovingWindowRateLimiter(storage)
    return found


def hit(scope: str, who: str | int, rate: str) -> int | None:
    """Counts one request of ``who`` against ``rate``; None if it is within
    the limit, else the seconds until one more would be (not counted then)."""
    item, limits = parse_rate(rate), limiter()
    if limits.hit(item, scope, str(who)):
        return None
    reset_at, _ = limits.get_window_stats(item, scope, str(who))
    return max(1, math.ceil(reset_at - time.time()))


def clear(scope: str, who: str | int, rate: str) -> None:
    """Forgets ``who``'s requests against ``rate`` (tests; an operator's reset)."""
    limiter().clear(parse_rate(rate), scope, str(who))
