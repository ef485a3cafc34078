"""TASK_RATE_LIMIT holds under concurrency: a burst of POSTs from one user,
all at once, across two web processes, queues exactly the limit's worth of
tasks; and tasklight/rate_limits.py alone, on Redis and in memory."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import httpx
import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from tasklight import rate_limits
from workloads.models import Task

LIMIT = 10
BURST = 80


async def at_once(
    base_urls: list[str], path: str, bodies: Sequence[Mapping[str, object]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POSTs ``bodies`` to ``path`` all at once, spread over the web processes."""
    limits = httpx.Limits(max_connections=len(bodies))
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) for url in base_urls]
    try:
        return await asyncio.gather(*(clients[n % len(clients)].post(path, json=body) for n, body in enumerate(bodies)))
    finally:
        for client in clients:
            await client.aclose()


def statuses(responses: list[httpx.Response]) -> collections.Counter[int]:
    return collections.Counter(response.status_code for response in responses)


def burst(base_urls: list[str], token: str) -> collections.Counter[int]:
    """BURST task POSTs at once by the token's user; their statuses."""
    task: dict[str, object] = {"kind": "simulate", "params": {"seconds": 0}}
    responses = asyncio.run(at_once(base_urls, "/api/tasks/", [task] * BURST, {"Authorization": f"Token {token}"}))
    for response in responses:
        if response.status_code == 429:
            assert 0 < int(response.headers["Retry-After"]) <= 60
    return statuses(responses)


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_burst_across_two_web_processes_queues_exactly_the_limit(private_stack) -> None:
    first = private_stack(TASK_RATE_LIMIT=f"{LIMIT}/min")
    second = private_stack(TASK_RATE_LIMIT=f"{LIMIT}/min")
    alice = User.objects.create_user("burst-alice", password=None)
    bob = User.objects.create_user("burst-bob", password=None)
    alice_token, bob_token = (Token.objects.create(user=user).key for user in (alice, bob))
    for user in (alice, bob):  # an earlier run's users had the same ids
        rate_limits.clear("queue", user.pk, f"{LIMIT}/min")

    counted = burst([first.base_url, second.base_url], alice_token)

    assert counted == {202: LIMIT, 429: BURST - LIMIT}, counted
    assert Task.objects.filter(owner=alice).count() == LIMIT
    # The next one is refused too; bob's budget is his own.
    assert burst([first.base_url], alice_token)[202] == 0
    assert burst([second.base_url], bob_token)[202] == LIMIT


@pytest.mark.parametrize(
    ("rate", "amount", "seconds"),
    [("120/min", 120, 60), ("5/s", 5, 1), ("1000/hour", 1000, 3600), ("2/day", 2, 86400), ("7/sec", 7, 1)],
)
def test_rates_are_read_in_drf_format(rate: str, amount: int, seconds: int) -> None:
    item = rate_limits.parse_rate(rate)
    assert (item.amount, item.get_expiry()) == (amount, seconds)


@pytest.mark.parametrize("rate", ["", "120", "x/min", "0/min", "-1/min", "5/week", "5/"])
def test_a_malformed_rate_is_refused(rate: str) -> None:
    with pytest.raises(rate_limits.InvalidRate, match="such as 120/min"):
        rate_limits.parse_rate(rate)


def test_a_malformed_rate_setting_stops_the_process_at_start() -> None:
    env = {**os.environ, "TASK_RATE_LIMIT": "5/week", "DJANGO_SETTINGS_MODULE": "tasklight.settings"}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "TASK_RATE_LIMIT must be a count per second, minute, hour or day" in done.stderr


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest, settings) -> str:
    """The limiter on the test run's Redis (production), or in memory (embedded mode)."""
    if request.param == "memory":
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    return str(request.param)


def test_the_limiter_is_the_stores(store: str) -> None:
    storage = type(rate_limits.limiter().storage).__name__
    assert storage == {"redis": "RedisStorage", "memory": "MemoryStorage"}[store]


def test_threads_at_once_get_exactly_the_limit(store: str) -> None:
    who = f"threads-{time.time_ns()}"
    allowed: list[bool] = []
    start = threading.Barrier(32)

    def one() -> None:
        start.wait()
        for _ in range(4):
            allowed.append(rate_limits.hit("test", who, "50/min") is None)

    threads = [threading.Thread(target=one) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 50
    assert allowed.count(False) == 32 * 4 - 50


def test_a_refused_request_is_told_when_to_retry_and_the_window_moves_on(store: str) -> None:
    who = f"window-{time.time_ns()}"
    assert [rate_limits.hit("test", who, "2/s") for _ in range(2)] == [None, None]
    assert rate_limits.hit("test", who, "2/s") == 1
    # Refusals are not counted: once the first two are a second old, two more pass.
    deadline = time.monotonic() + 5
    while rate_limits.hit("test", who, "2/s") is not None:
        assert time.monotonic() < deadline, "the window did not move on"
        time.sleep(0.05)
    assert rate_limits.hit("test", who, "2/s") is None
    assert rate_limits.hit("test", who, "2/s") == 1
    # Another scope, and another user, count apart.
    assert rate_limits.hit("other", who, "2/s") is None
    assert rate_limits.hit("test", who + "-b", "2/s") is None


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_wrong_passwords_sent_at_once_are_checked_no_more_than_the_accounts_budget(private_stack) -> None:
    """Checking the count first and counting failures after let all 30 be
    checked (400): a password-guessing burst went around the budget of 5."""
    running = private_stack(LOGIN_FAILURES_PER_ACCOUNT="5", LOGIN_FAILURES_PER_ADDRESS="1000")
    username = f"guessed-{time.time_ns()}"
    User.objects.create_user(username, password="the-right-passphrase-1")
    guesses = [{"username": username, "password": f"guess-{n}"} for n in range(30)]

    assert statuses(asyncio.run(at_once([running.base_url], "/api/auth/login/", guesses))) == {400: 5, 429: 25}
    # Spent: the right password is refused too, until the window ends.
    right = [{"username": username, "password": "the-right-passphrase-1"}]
    assert statuses(asyncio.run(at_once([running.base_url], "/api/auth/login/", right))) == {429: 1}


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_sign_ups_sent_at_once_from_one_address_make_no_more_than_the_limit(private_stack) -> None:
    running = private_stack(SIGNUP_RATE_LIMIT="3/hour")
    prefix = f"burst-{time.time_ns()}"
    sign_ups = [{"username": f"{prefix}-{n}", "password": "a-long-enough-passphrase-9"} for n in range(20)]

    assert statuses(asyncio.run(at_once([running.base_url], "/api/auth/signup/", sign_ups))) == {201: 3, 429: 17}
    assert User.objects.filter(username__startswith=prefix).count() == 3
