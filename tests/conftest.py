"""Shared fixtures. The suite runs on the real PostgreSQL, RabbitMQ and Redis
(`make test` points the usual variables at this machine's loopback services)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

PASSWORD = "a-long-enough-passphrase-9"

REQUIRED_SERVICES = {
    "DATABASE_URL": ("PostgreSQL", 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    "CELERY_BROKER_URL": ("RabbitMQ", 5672, "rabbitmq-server -detached"),
    "CHANNEL_LAYER_URL": ("Redis", 6379, "redis-server --daemonize yes --port 6379"),
}


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
def fast_password_hashing(settings) -> None:
    """In-process tests only: the real hasher costs ~0.3 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One uvicorn process and one Celery worker on PostgreSQL, RabbitMQ and
    Redis, sharing the test database. Started once for the session."""
    from django.db import connection

    from tasklight.celery import app as celery_app

    from . import stack as processes

    settings_dict = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"
        ),
        "PYTHONUNBUFFERED": "1",
    }
    # Leftovers of an earlier, interrupted run must not reach this worker.
    celery_app.control.purge()
    log_dir = tmp_path_factory.mktemp("stack-logs")
    web, base_url = processes.start_web(env, log_dir)
    worker = processes.start_worker(env, log_dir)
    yield type("Stack", (), {"base_url": base_url, "env": env, "log_dir": log_dir, "web": web, "worker": worker})
    worker.stop()
    web.stop()
