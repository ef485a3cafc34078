"""Shared fixtures. The suite runs on the real PostgreSQL, RabbitMQ and Redis
(`make test` points the usual variables at this machine's loopback services)."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management.base import CommandError
from django.test import TransactionTestCase
from rest_framework.test import APIClient

from workloads.outbox import outbox
from workloads.sent_marks import sent_marks

PASSWORD = "a-long-enough-passphrase-9"

REQUIRED_SERVICES = {
    "DATABASE_URL": ("PostgreSQL", 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    "CELERY_BROKER_URL": ("RabbitMQ", 5672, "rabbitmq-server -detached"),
    "CHANNEL_LAYER_URL": ("Redis", 6379, "redis-server --daemonize yes --port 6379"),
}


def _deadlocked(error: BaseException | None) -> bool:
    """Whether PostgreSQL's deadlock detector is behind this error (flush
    raises a CommandError from Django's error, itself from psycopg's)."""
    while error is not None:
        if isinstance(error, psycopg.errors.DeadlockDetected):
            return True
        error = error.__cause__ or error.__context__
    return False


_flush_every_table = TransactionTestCase._fixture_teardown


def _flush_every_table_again_after_a_deadlock(self: TransactionTestCase) -> None:
    """A transactional test's teardown empties every table (Django's flush:
    one TRUNCATE). The session's worker may still be ending a task the test
    queued, its transaction holding a lock on one table and waiting for
    another that the TRUNCATE has taken: PostgreSQL ends the deadlock by
    failing one of the two, and when that was the TRUNCATE the test errored
    at teardown (fresh-clone CI runs: test_outbox before a222743,
    test_request_bodies on 2026-12-08). The worker's transaction then ends,
    and the flush is tried again; any other failure is raised as before."""
    for attempt in range(3):
        try:
            _flush_every_table(self)
            return
        except CommandError as exc:
            if attempt == 2 or not _deadlocked(exc):
                raise


TransactionTestCase._fixture_teardown = _flush_every_table_again_after_a_deadlock


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuses to run, naming the service, when one is not reachable."""
    problems = []
    for variable, (name, default_port, how) in REQUIRED_SERVICES.items():
        url = os.environ.get(variable)
        if not url:
            problems.append(f"{variable} is not set: run the suite with `make test`")
            continue
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            problems.append(f"{name} is not reachable at {host}:{port} ({variable}): {exc}. Start it: {how}")
    if problems:
        pytest.exit("Tasklight's tests need the real services:\n  " + "\n  ".join(problems), returncode=3)


@pytest.fixture
def alice(db: None) -> User:
    """The user whose tasks the tests create."""
    return User.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(db: None) -> User:
    """Bob must never see, nor hear of, alice's tasks."""
    return User.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient(enforce_csrf_checks=True)


@pytest.fixture
def alice_api(alice: User) -> APIClient:
    """Alice, signed in with a session (CSRF checks off: the browser's CSRF
    dance has tests of its own)."""
    client = APIClient()
    client.force_login(alice)
    return client


@pytest.fixture
def bob_api(bob: User) -> APIClient:
    client = APIClient()
    client.force_login(bob)
    return client


@pytest.fixture(autouse=True)
def settled_sent_marks() -> Iterator[None]:
    """A task queued in this process is sent by a thread (workloads/outbox.py)
    and its ``sent_at`` mark written by another ~50 ms later
    (workloads/sent_marks.py): both done here, before the test's database
    is emptied, nothing of a test is left to lock rows under the next one.
    (pytest-django's database fixtures are set up first, so this runs
    before their teardown.)"""
    yield
    outbox.flush()  # sends, whose marks go to sent_marks
    sent_marks.flush()


@pytest.fixture(autouse=True)
def fresh_throttles() -> None:
    """Every test starts with no failed log-ins or sign-ups counted against 127.0.0.1."""
    forget_throttle_history()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """In-process tests only: the real hasher costs ~0.3 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def stack_env(**overrides: str) -> dict[str, str]:
    """The environment of the processes under test: the test database, the
    test workloads, and tight knobs so that waits stay short."""
    from django.db import connection

    settings_dict = connection.settings_dict
    # Importing tasklight.asgi here marks this process "web"; the children say what they are.
    inherited = {key: value for key, value in os.environ.items() if key != "TASKLIGHT_PROCESS"}
    return {
        **inherited,
        "DATABASE_URL": (
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"
        ),
        "PYTHONUNBUFFERED": "1",
        "WORKLOAD_MODULES": "tests.workloads_for_tests",
        "MAX_RUNNING_TASKS_PER_USER": "2",
        "CANCEL_GRACE_SECONDS": "2",
        "CANCEL_POLL_SECONDS": "0.2",
        "TASK_LEASE_SECONDS": "3",
        "RELAY_INTERVAL_SECONDS": "1",
        "RELAY_MIN_AGE_SECONDS": "1",
        **overrides,
    }


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    log_dir: Path
    web: Any
    workers: list[Any] = field(default_factory=list)
    worker_env: dict[str, str] | None = None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()}" for p in [self.web, *self.workers])

    def restart_web(self) -> None:
        """Stops the web process and starts a new one on the same port: every
        socket on it drops."""
        from . import stack as processes

        port = int(self.base_url.rsplit(":", 1)[1])
        self.web.stop()
        self.web, _ = processes.start_web(self.env, self.log_dir, name=f"{self.web.name}-again", port=port)

    def start_worker(self, concurrency: int = 2, **overrides: str) -> Any:
        from . import stack as processes

        name = f"worker-{len(self.workers)}"
        env = {**(self.worker_env or self.env), **overrides}
        worker = processes.start_worker(env, self.log_dir, name=name, concurrency=concurrency)
        self.workers.append(worker)
        return worker


def forget_throttle_history() -> None:
    """Rate-limit counters of an earlier run would count against this one's
    users, whose ids start from 1 again."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CHANNEL_LAYER_URL)
    for key in client.scan_iter(match=f"*{settings.CACHES['default']['KEY_PREFIX']}*", count=1000):
        client.delete(key)


@pytest.fixture(scope="session")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One uvicorn process and one Celery worker on PostgreSQL, RabbitMQ and
    Redis, sharing the test database. Started once for the session."""
    from tasklight.celery import app as celery_app

    from . import stack as processes

    env = stack_env()
    # Leftovers of an earlier, interrupted run must not reach this worker.
    celery_app.control.purge()
    forget_throttle_history()
    log_dir = tmp_path_factory.mktemp("stack-logs")
    web, base_url = processes.start_web(env, log_dir)
    worker = processes.start_worker(env, log_dir)
    running = Stack(base_url, env, log_dir, web, [worker])
    yield running
    worker.stop()
    web.stop()


@pytest.fixture
def private_stack(django_db_setup: None, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """A web process and workers of a test's own, on a queue of their own, for
    tests that kill or starve them. Call it with env overrides for the web
    process; start workers with ``start_worker``."""
    from . import stack as processes

    queue = f"tasklight-test-{uuid.uuid4().hex[:8]}"
    started: list[Stack] = []

    def launch(**web_overrides: str) -> Stack:
        env = stack_env(TASKLIGHT_QUEUE=queue, **web_overrides)
        web, base_url = processes.start_web(env, tmp_path, name=f"web-{len(started)}")
        started.append(Stack(base_url, env, tmp_path, web))
        started[-1].worker_env = stack_env(TASKLIGHT_QUEUE=queue)
        return started[-1]

    yield launch
    for running in started:
        for process in [*running.workers, running.web]:
            process.stop(signal.SIGKILL)
    delete_queue(queue)


def delete_queue(name: str) -> None:
    from tasklight.celery import app as celery_app

    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_delete(name)
