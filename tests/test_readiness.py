"""/readyz names the part that is down and recovers when it is back, without a
restart. Each service "goes down" behind a TCP proxy of the test's own: the
machine's PostgreSQL, RabbitMQ and Redis keep serving the other suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tasklight.health import PartStatus, unknown_workers

from .proxy import TcpProxy
from .stack import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PARTS = {"database": "DATABASE_URL", "broker": "CELERY_BROKER_URL", "channel_layer": "CHANNEL_LAYER_URL"}

# A check answers within its own timeout; the pool's wait for a connection is
# the longest of them (DATABASE_POOL_TIMEOUT below).
READYZ_TIMEOUT = 10
# Prometheus gives up on a scrape after 10 s by default.
SCRAPE_TIMEOUT = 9
METRICS_TOKEN = "readiness-test-metrics-token"


@pytest.fixture
def proxies() -> Iterator[dict[str, TcpProxy]]:
    started = {}
    for part, variable in PARTS.items():
        target = urlsplit(os.environ[variable])
        started[part] = TcpProxy(target.hostname or "127.0.0.1", target.port or 0)
    yield started
    for proxy in started.values():
        proxy.close()


def readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{base_url}/readyz", timeout=READYZ_TIMEOUT)
    return response.status_code, response.json()


def ready(base_url: str) -> dict[str, Any]:
    """/readyz's body once it answers 200; empty (for wait_for: not yet) until then."""
    status, body = readyz(base_url)
    return body if status == 200 else {}


def unavailable(base_url: str) -> dict[str, Any]:
    status, body = readyz(base_url)
    return body if status == 503 else {}


def healthz(base_url: str) -> int:
    return httpx.get(f"{base_url}/healthz", timeout=READYZ_TIMEOUT).status_code


def test_readyz_names_each_part_that_is_down_and_recovers(private_stack, proxies) -> None:
    running = start_behind(private_stack, proxies)
    try:
        check_each_part(running, proxies)
    except BaseException:
        print(running.logs())  # pytest shows it with the failure
        raise
    assert running.web.popen.poll() is None, "the web process recovered without a restart"


def start_behind(private_stack, proxies: dict[str, TcpProxy]) -> Any:
    """A web process of the test's own that reaches every service through its proxy."""
    from django.db import connection

    database = connection.settings_dict
    return private_stack(
        DATABASE_URL=proxies["database"].url_for(
            f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
        ),
        CELERY_BROKER_URL=proxies["broker"].url_for(os.environ["CELERY_BROKER_URL"]),
        CHANNEL_LAYER_URL=proxies["channel_layer"].url_for(os.environ["CHANNEL_LAYER_URL"]),
        METRICS_TOKEN=METRICS_TOKEN,
        LOG_FORMAT="json",
    )


def check_each_part(running: Any, proxies: dict[str, TcpProxy]) -> None:
    base_url = running.base_url
    body = wait_for(lambda: ready(base_url), timeout=30, what="/readyz 200")
    assert body["status"] == "ok" and body["down"] == []
    # Every part really goes through its proxy: pausing it must be felt.
    assert all(proxy.forwarded > 0 for proxy in proxies.values()), {
        part: proxy.forwarded for part, proxy in proxies.items()
    }

    for part, proxy in proxies.items():
        proxy.pause()
        try:
            body = wait_for(lambda: unavailable(base_url), timeout=30, what=f"/readyz 503 with {part} down")
            assert body["status"] == "unavailable"
            assert body["down"] == [part], body
            states = {entry["name"]: entry["ok"] for entry in body["parts"]}
            assert states == {name: name != part for name in PARTS}, body
            assert healthz(base_url) == 200, "liveness must not depend on the services"
            if part == "database":
                without_the_database(running)
        finally:
            proxy.resume()
        # Back without a restart: the pool, the broker connection and the
        # channel layer's subscriptions all reconnect by themselves.
        body = wait_for(lambda: ready(base_url), timeout=30, what=f"/readyz 200 with {part} back")
        assert body["down"] == []
        assert healthz(base_url) == 200


def without_the_database(running: Any) -> None:
    """/metrics and the About page answer without waiting for the pool's
    10 s: the scrape keeps every series but the task count, the page says
    the workers are unknown. The scrape's warning said "readiness", as if
    /readyz had failed."""
    base_url = running.base_url
    scraped = httpx.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=SCRAPE_TIMEOUT
    )
    assert scraped.status_code == 200
    assert "tasklight_open_sockets" in scraped.text and "tasklight_tasks{" not in scraped.text
    request_id = scraped.headers["X-Request-ID"]

    def warned() -> list[str]:
        return [
            line["message"]
            for line in map(json.loads, filter(lambda text: text.startswith("{"), running.web.log().splitlines()))
            if line.get("request_id") == request_id and line["logger"] == "tasklight.health"
        ]

    (warning,) = wait_for(warned, timeout=10, what="the scrape's warning")
    assert warning.startswith("database unreachable: "), warning
    about = httpx.get(f"{base_url}/about/", timeout=SCRAPE_TIMEOUT)
    assert about.status_code == 200 and "unknown: the database is unreachable" in about.text


@pytest.mark.django_db
def test_the_workers_are_unknown_for_the_reason_the_database_check_gives(client: Any) -> None:
    """The About page tells why from the check's flag, not from its wording;
    the flag is for code, and /readyz shows what it showed."""
    reworded = PartStatus("database", "postgresql", False, "reworded for people", not_migrated=True)
    assert unknown_workers(reworded).detail == "unknown: the database is not migrated"
    unreachable = PartStatus("database", "postgresql", False, "unreachable")
    assert unknown_workers(unreachable).detail == "unknown: the database is unreachable"
    parts = client.get("/readyz", HTTP_HOST="web1:8000").json()["parts"]
    assert [sorted(part) for part in parts] == [["backend", "detail", "name", "ok"]] * 3


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_by_the_processs_own_address_over_plain_http(client: Any, settings: Any, path: str) -> None:
    """A probe or a scrape comes to web1:8000 over HTTP: Django's Host check
    answered 400 (an ERROR line each time) and HTTPS a 301 to https, which
    many probes count as healthy. Pages keep both."""
    settings.ALLOWED_HOSTS = ["tasklight.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_TOKEN = METRICS_TOKEN
    headers = {"HTTP_HOST": "web1:8000", "HTTP_AUTHORIZATION": f"Bearer {METRICS_TOKEN}"}
    assert client.get(path, **headers).status_code in (200, 503)
    assert client.head(path, **headers).status_code in (200, 503)
    assert client.post(path, **headers).status_code == 405
    assert client.get("/about/", **headers).status_code == 400
    assert client.get("/about/", HTTP_HOST="tasklight.example.com").status_code == 301


@pytest.mark.timeout(300)
def test_a_web_process_before_the_release_is_not_ready_and_two_releases_at_once_both_succeed(
    tmp_path: Any,
) -> None:
    """A web process on a database not yet migrated answered /readyz 200 and
    then 500s (relation does not exist); now 503 until the release has run,
    and its About page says so.
    Two releases at once (one per machine) collided: one failed with a
    duplicate type; now they take turns and both succeed."""
    from django.db import connection

    from . import stack as processes
    from .conftest import stack_env

    name = f"tasklight_release_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        settings_dict = connection.settings_dict
        env = stack_env(
            DATABASE_URL=f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{name}"
        )
        web, base_url = processes.start_web(env, tmp_path)
        try:
            status, body = readyz(base_url)
            assert status == 503 and body["down"] == ["database"], body
            assert "migrations" in body["parts"][0]["detail"]
            # The About page said the database was unreachable.
            about = httpx.get(f"{base_url}/about/", timeout=READYZ_TIMEOUT)
            assert about.status_code == 200
            assert "unknown: the database is not migrated" in about.text and "unreachable" not in about.text
            releases = [
                subprocess.Popen(
                    [sys.executable, "manage.py", "migrate_all", "--noinput"],
                    cwd=processes.ROOT,
                    env={**env, "TASKLIGHT_PROCESS": ""},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(2)
            ]
            try:
                outputs = [release.communicate(timeout=120)[0] for release in releases]
            finally:
                for release in releases:
                    release.kill()
            assert [release.returncode for release in releases] == [0, 0], outputs
            assert ready(base_url)["down"] == []
        finally:
            web.stop()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
