"""Counters against brute force, in the shared cache (Redis in production).

Log-in failures: a counter starts at the first hit and expires ``window``
seconds later, so a client that hit the limit waits at most that long.
Sign-ups: SIGNUP_RATE_LIMIT, a rate like TASK_RATE_LIMIT, on the same
limiter (tasklight/rate_limits.py).

Every log-in attempt is counted before it is judged (an atomic increment:
Redis's INCR, or the in-memory cache's lock), and given back if it is
refused or the password was right; the sign-up limiter checks and counts in
one step. Checking first and counting after let
attempts made at once all pass on the same count: 30 wrong passwords sent at
once for one account were all checked against a budget of 5, and 20 sign-ups
at once at 3/hour made 8 accounts (tests/test_rate_limit.py).
"""

from __future__ import annotations

import contextlib
import unicodedata

from django.conf import settings
from django.core.cache import cache

from tasklight import rate_limits


def _hit(key: str, window: int) -> int:
    """Counts one more; the count with it."""
    cache.add(key, 0, timeout=window)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        return 1


def _give_back(key: str) -> None:
    with contextlib.suppress(ValueError):  # expired meanwhile: nothing to give back
        cache.decr(key)


def _login_keys(username: str, address: str) -> tuple[str, str]:
    # As the log-in form finds the account: NFKC first (its UsernameField),
    # so that "carol" spelt with a full-width c counts against carol, not apart.
    account = unicodedata.normalize("NFKC", username).strip().casefold()
    return f"login-failures:user:{account}", f"login-failures:address:{address}"


def login_attempt(*, username: str, address: str) -> int | None:
    """Counts a log-in attempt as a failure of the account and of the
    address, before its password is checked; None if both are within their
    budgets, else the seconds to wait (and the attempt is not counted). A
    right password gives its count back (``login_succeeded``)."""
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    by_user, by_address = _login_keys(username, address)
    failures = _hit(by_user, window), _hit(by_address, window)
    if failures[0] > settings.LOGIN_FAILURES_PER_ACCOUNT or failures[1] > settings.LOGIN_FAILURES_PER_ADDRESS:
        _give_back(by_user)
        _give_back(by_address)
        return window
    return None


def login_succeeded(*, username: str, address: str) -> None:
    """The account's failures are forgotten; the address's count this one back."""
    by_user, by_address = _login_keys(username, address)
    cache.delete(by_user)
    _give_back(by_address)


def signup_wait(*, address: str) -> int | None:
    """Counts a sign-up from ``address`` against SIGNUP_RATE_LIMIT, with the
    task queueing limit's mechanism (tasklight/rate_limits.py: atomic, and a
    refused one is not counted); None if within it, else seconds to wait."""
    return rate_limits.hit("signup", address, settings.SIGNUP_RATE_LIMIT)
