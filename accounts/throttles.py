"""Counters against brute force, in the shared cache (Redis in production).

A counter starts at the first hit and expires ``window`` seconds later, so a
client that hit the limit waits at most that long.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache


def _blocked(key: str, limit: int) -> bool:
    return int(cache.get(key, 0)) >= limit


def _hit(key: str, window: int) -> None:
    cache.add(key, 0, timeout=window)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)


def _login_keys(username: str, address: str) -> tuple[str, str]:
    return f"login-failures:user:{username.strip().lower()}", f"login-failures:address:{address}"


def login_wait(*, username: str, address: str) -> int | None:
    """Seconds to wait before another log-in attempt, or None if allowed."""
    by_user, by_address = _login_keys(username, address)
    if _blocked(by_user, settings.LOGIN_FAILURES_PER_ACCOUNT) or _blocked(
        by_address, settings.LOGIN_FAILURES_PER_ADDRESS
    ):
        return settings.LOGIN_FAILURE_WINDOW_SECONDS
    return None


def login_failed(*, username: str, address: str) -> None:
    for key in _login_keys(username, address):
        _hit(key, settings.LOGIN_FAILURE_WINDOW_SECONDS)


def login_succeeded(*, username: str) -> None:
    cache.delete(_login_keys(username, "")[0])


def _rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]


def signup_wait(*, address: str) -> int | None:
    limit, window = _rate(settings.SIGNUP_RATE_LIMIT)
    key = f"signups:address:{address}"
    if _blocked(key, limit):
        return window
    _hit(key, window)
    return None
