"""Connections kept, not reopened: a worker's pool process keeps its
PostgreSQL connection from task to task (WORKER_CONN_MAX_AGE) and names it in
pg_stat_activity (DATABASE_APPLICATION_NAME); a web process pools its own, and
keeps its Redis connections for the rate limits from request to request
(tasklight/cache.py)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection

from . import stack as processes
from .conftest import stack_env
from .stack import Account, terminal_for, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def backend_of_each_task(running, worker_overrides: dict[str, str], tasks: int = 4) -> list[dict[str, object]]:
    running.start_worker(concurrency=1, **worker_overrides)
    alice = Account.sign_up(running.base_url)
    results = []
    with alice.socket() as socket:
        for _ in range(tasks):
            task = alice.queue("database_backend")
            frames = socket.events_until(terminal_for(task["id"]))
            assert frames[-1]["event"] == "task.succeeded", frames[-1]
            results.append(frames[-1]["task"]["result"])
    return results


def test_a_pool_process_keeps_its_connection_across_tasks(private_stack) -> None:
    results = backend_of_each_task(private_stack(), {})
    assert len({r["pid"] for r in results}) == 1, results
    assert {r["application_name"] for r in results} == {"tasklight-worker"}


def test_worker_conn_max_age_zero_connects_per_task(private_stack) -> None:
    results = backend_of_each_task(private_stack(), {"WORKER_CONN_MAX_AGE": "0", "DATABASE_APPLICATION_NAME": "tl-x"})
    assert len({r["pid"] for r in results}) == len(results), results
    assert {r["application_name"] for r in results} == {"tl-x"}


def test_a_web_process_is_one_whatever_its_environment_says(tmp_path: Path) -> None:
    """tasklight/asgi.py set TASKLIGHT_PROCESS=web only where it was unset: a
    worker's value left in the environment (one shell or platform environment
    for both) gave a web process the worker's connections, unpooled, kept
    600 s by each thread and named tasklight-worker in pg_stat_activity."""
    name = f"tasklight_web_{uuid.uuid4().hex[:8]}"  # a database only this web process uses
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        settings_dict = connection.settings_dict
        env = stack_env(
            DATABASE_URL=f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{name}",
            TASKLIGHT_PROCESS="worker",
        )
        env.pop("DATABASE_APPLICATION_NAME", None)
        web, base_url = processes.start_web(env, tmp_path)

        def named() -> list[str]:
            with connection.cursor() as cursor:
                cursor.execute("SELECT application_name FROM pg_stat_activity WHERE datname = %s", [name])
                return sorted(row[0] for row in cursor.fetchall())

        try:
            httpx.get(f"{base_url}/readyz", timeout=30)  # its first use of the database
            assert set(wait_for(named, timeout=30, what="the web process to connect")) == {"tasklight-web"}
            # The pool opens its minimum of two, where a worker's settings kept one per thread.
            wait_for(lambda: len(named()) >= 2, timeout=30, what="the pool's two connections")
            assert set(named()) == {"tasklight-web"}
        finally:
            web.stop()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_a_web_process_keeps_its_redis_connections_across_requests(private_stack) -> None:
    running = private_stack(TASK_RATE_LIMIT="1000/min")
    alice = Account.sign_up(running.base_url)
    alice.queue("simulate", seconds=0)  # warm: the pool has its connection
    client = redis.Redis.from_url(settings.CHANNEL_LAYER_URL)
    before = connections_received(client)
    requests = 40
    for _ in range(requests):
        alice.queue("simulate", seconds=0)  # each POST checks the rate limit in Redis
    opened = connections_received(client) - before
    # Before tasklight/cache.py, each request opened one of its own (>= 40).
    assert opened < requests / 4, f"{opened} Redis connections opened for {requests} requests"


def test_every_cache_of_a_process_shares_one_client_and_pool() -> None:
    from tasklight.cache import SharedRedisCache

    clients = []

    def client_of_a_new_cache() -> None:
        # What Django does for each thread (and each request under ASGI).
        clients.append(SharedRedisCache(settings.CHANNEL_LAYER_URL, {})._cache)

    threads = [threading.Thread(target=client_of_a_new_cache) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 1
    assert len({id(client._get_connection_pool(write=True)) for client in clients}) == 1


def test_the_shared_client_keeps_one_redis_object_per_pool() -> None:
    from tasklight.cache import SharedRedisCache

    cache = SharedRedisCache(settings.CHANNEL_LAYER_URL, {"OPTIONS": {}})
    client = cache._cache
    # Django's own client builds a redis.Redis for every operation.
    assert client.get_client(write=True) is client.get_client(write=False) is client.get_client("any-key")
    key = f"tasklight-test-reuse-{threading.get_ident()}"
    cache.set(key, {"a": 1}, 30)
    assert cache.get(key) == {"a": 1}
    assert cache.add(key + "-n", 1, 30)
    assert cache.incr(key + "-n") == 2
    cache.delete_many([key, key + "-n"])
    assert cache.get(key) is None
