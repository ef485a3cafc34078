"""The About page's "workers" part: which workers consume this deployment's
queue, from their housekeepers' reports (workloads/workers.py). Real workers
on RabbitMQ, each test on a queue of its own (private_stack), so the session's
worker on the shared test database is not counted."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.contrib.auth.models import User

from workloads import tasks
from workloads.models import Worker

from .proxy import TcpProxy
from .stack import BIN, HTTP_TIMEOUT, PASSWORD, ROOT, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


_staff_sessions: dict[str, httpx.Client] = {}


@pytest.fixture(autouse=True)
def staff_sessions() -> Iterator[None]:
    """The workers table is shown to staff only: each test's web process is
    asked by a staff member signed in once (see workers_part)."""
    yield
    for client in _staff_sessions.values():
        client.close()
    _staff_sessions.clear()


def as_staff(base_url: str) -> httpx.Client:
    if base_url not in _staff_sessions:
        username = f"staff-{uuid.uuid4().hex[:8]}"
        client = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT)
        # Signed up (and in) by the web process itself, then made staff.
        assert client.post("/api/auth/signup/", json={"username": username, "password": PASSWORD}).status_code == 201
        User.objects.filter(username=username).update(is_staff=True)
        _staff_sessions[base_url] = client
    return _staff_sessions[base_url]


def workers_part(base_url: str) -> dict[str, Any]:
    """The About page's row for the workers, and the pids of those it lists,
    as a staff member sees it."""
    page = as_staff(base_url).get("/about/")
    assert page.status_code == 200
    row = re.search(r'<tr data-part="workers">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    status = re.search(r'data-testid="part-status">(\w+)<', row.group(1))
    assert status, row.group(1)
    return {
        "status": status.group(1),
        "detail": html.unescape(re.sub(r"\s+", " ", cells[-1]).strip()),
        "pids": [int(pid) for pid in re.findall(r'data-testid="worker" data-pid="(\d+)"', page.text)],
    }


def listed(base_url: str, pids: list[int], what: str, timeout: float = 10) -> dict[str, Any]:
    """The workers' row once the About page lists exactly these workers."""
    return wait_for(
        lambda: (part := workers_part(base_url))["pids"] == pids and part,
        timeout=timeout,
        what=f"the About page to list {what}",
    )


def test_the_about_page_shows_a_worker_while_it_runs_and_none_once_it_stopped(private_stack) -> None:
    running = private_stack()
    before = workers_part(running.base_url)
    assert (before["status"], before["pids"]) == ("down", [])
    assert before["detail"] == "none running: queued tasks wait for one"

    worker = running.start_worker(concurrency=1)
    shown = listed(running.base_url, [worker.popen.pid], "the worker")
    assert shown["status"] == "ok"
    assert shown["detail"] == "1 running, 1 pool process"
    # Anyone else is told the state, not the machines: no worker names or
    # pids, no broker host.
    public = httpx.get(f"{running.base_url}/about/", timeout=10).text
    assert "1 running, 1 pool process" in public
    assert 'data-testid="worker"' not in public and str(worker.popen.pid) not in public
    broker_host = urlsplit(os.environ["CELERY_BROKER_URL"]).netloc.rsplit("@", 1)[-1]
    assert broker_host in as_staff(running.base_url).get("/about/").text
    assert broker_host not in public
    assert broker_host not in httpx.get(f"{running.base_url}/readyz", timeout=10).text
    # Its reports go on: still shown after several of its rounds (1 s here).
    row = Worker.objects.get(pid=worker.popen.pid)
    wait_for(
        lambda: Worker.objects.get(pk=row.pk).seen_at > row.seen_at,
        timeout=10,
        what="the worker to report again",
    )
    assert row.name.startswith("worker-0-") and row.concurrency == 1

    worker.stop(signal.SIGTERM)  # a warm shutdown: it reports itself gone
    assert worker.popen.returncode == 0, worker.log()[-2000:]
    after = workers_part(running.base_url)
    assert (after["status"], after["pids"]) == ("down", [])
    assert after["detail"] == "none running: queued tasks wait for one"
    assert not Worker.objects.filter(pid=worker.popen.pid).exists()
    assert "workers:" not in worker.log(), worker.log()[-2000:]


def test_a_worker_whose_live_events_go_under_another_prefix_is_named_on_the_about_page(private_stack) -> None:
    """A worker whose CHANNEL_LAYER_PREFIX differs from the web process's
    publishes its tasks' events where no socket listens: pages heard of them
    only at each heartbeat, and nothing said why. Its mark in Redis, under its
    own prefix, is not found through the web process's, and the About page
    says so, naming the two variables, until it stops."""
    running = private_stack()
    same = running.start_worker(concurrency=1)
    assert listed(running.base_url, [same.popen.pid], "the first worker")["status"] == "ok"
    elsewhere = running.start_worker(concurrency=1, CHANNEL_LAYER_PREFIX=f"elsewhere-{uuid.uuid4().hex[:8]}")
    shown = listed(running.base_url, [same.popen.pid, elsewhere.popen.pid], "both workers")
    assert shown["status"] == "down"
    assert shown["detail"] == (
        "2 running, 2 pool processes; 1 of them publishes live events through another Redis or "
        "CHANNEL_LAYER_PREFIX than this web process's, so pages hear of their tasks only at each heartbeat: "
        "set CHANNEL_LAYER_URL and CHANNEL_LAYER_PREFIX the same on every process"
    )
    assert Worker.objects.filter(pid__in=[same.popen.pid, elsewhere.popen.pid], marks_layer=True).count() == 2

    elsewhere.stop(signal.SIGTERM)
    after = workers_part(running.base_url)
    assert (after["status"], after["detail"], after["pids"]) == ("ok", "1 running, 1 pool process", [same.popen.pid])


def test_a_killed_worker_counts_as_gone_once_it_misses_its_reports(private_stack) -> None:
    running = private_stack()
    worker = running.start_worker(concurrency=2)
    listed(running.base_url, [worker.popen.pid], "the worker")
    worker.stop(signal.SIGKILL)  # no chance to report anything
    last_seen = Worker.objects.get(pid=worker.popen.pid).seen_at
    # Three missed reports (RELAY_INTERVAL_SECONDS is 1 s here), not before.
    gone = wait_for(
        lambda: (part := workers_part(running.base_url))["status"] == "down" and part,
        timeout=10,
        what="the killed worker to count as gone",
    )
    assert gone["pids"] == []
    assert gone["detail"] == f"none seen since {last_seen:%Y-%m-%d %H:%M:%S} UTC: queued tasks wait for one"

    # The next worker of the queue is listed alone; the dead one's row stays
    # (forgotten by the first cleanup a day later) and is not counted.
    second = running.start_worker(concurrency=2)
    shown = listed(running.base_url, [second.popen.pid], "the new worker")
    assert (shown["status"], shown["detail"]) == ("ok", "1 running, 2 pool processes")


def test_a_worker_cut_off_from_the_broker_counts_as_gone_until_it_is_back(private_stack) -> None:
    """It went on reporting itself alive from its housekeeper's thread while
    its consumer retried the broker: the About page said "1 running" and
    queued tasks waited."""
    running = private_stack()
    with TcpProxy(*broker_address()) as proxy:
        worker = running.start_worker(concurrency=1, CELERY_BROKER_URL=proxy.url_for(os.environ["CELERY_BROKER_URL"]))
        listed(running.base_url, [worker.popen.pid], "the worker")
        proxy.pause()
        gone = wait_for(
            lambda: (part := workers_part(running.base_url))["pids"] == [] and part,
            timeout=15,
            what="the worker to count as gone",
        )
        assert gone["status"] == "down" and gone["detail"].startswith("none seen since"), gone
        proxy.resume()
        wait_for(
            lambda: workers_part(running.base_url)["pids"] == [worker.popen.pid],
            timeout=60,
            what="the worker to be listed again once it reconnected",
        )
    assert "not reporting this worker alive while it cannot reach the broker" in worker.log()


def broker_address() -> tuple[str, int]:
    target = urlsplit(os.environ["CELERY_BROKER_URL"])
    return target.hostname or "127.0.0.1", target.port or 5672


def database_address() -> tuple[str, int]:
    from django.db import connection

    return connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432)


def worker_node(log: str) -> str:
    match = re.search(r"([\w.-]+@[\w.-]+) ready\.", log)
    assert match, log
    return match.group(1)


def probe(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A probe as an orchestrator runs it, in a process of its own."""
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_worker_cut_off_from_the_database_stays_alive_and_is_not_ready_until_it_is_back(private_stack) -> None:
    """Its liveness probe (celery inspect ping) answered yes while it could
    not reach the database, and no probe said otherwise: a worker that takes
    tasks only to retry them looked healthy. Readiness now says no; liveness
    still says yes, so an outage of the database restarts no worker."""
    running = private_stack()
    # The probes reach the database directly: their answer is the worker's.
    probe_env = {**running.worker_env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    with TcpProxy(*database_address()) as proxy:
        worker = running.start_worker(concurrency=1, DATABASE_URL=proxy.url_for(running.worker_env["DATABASE_URL"]))
        node = worker_node(worker.log())
        ready = [str(BIN / "python"), "manage.py", "worker_ready", "--destination", node, "--timeout", "10"]
        alive = [str(BIN / "celery"), "-A", "tasklight", "inspect", "ping", "--destination", node, "--timeout", "10"]
        up = wait_for(lambda: (p := probe(ready, probe_env)).returncode == 0 and p, timeout=30, what="readiness")
        assert f"{node}: ready (reported to the database" in up.stdout

        proxy.pause()
        down = wait_for(
            lambda: (p := probe(ready, probe_env)).returncode == 1 and p, timeout=30, what="the worker not ready"
        )
        assert f"{node} is not ready: cannot reach the database" in down.stderr
        assert probe(alive, probe_env).returncode == 0, "a database outage must not fail the liveness probe"
        assert worker.popen.poll() is None

        proxy.resume()
        wait_for(lambda: probe(ready, probe_env).returncode == 0, timeout=30, what="the worker ready again")

    worker.stop(signal.SIGKILL)
    gone = probe([*ready[:-2], "--timeout", "2"], probe_env)
    assert gone.returncode == 69 and f"{node} did not answer within 2 s" in gone.stderr


def test_a_worker_whose_round_is_stuck_counts_not_ready_after_three_rounds(monkeypatch, settings) -> None:
    """A query that never returns (a connection cut without a reset) leaves
    no failure to see: the last report ages instead, as the About page judges."""
    settings.RELAY_INTERVAL_SECONDS = 5
    monkeypatch.setattr(tasks.workers, "report_alive", lambda *args, **kwargs: None)
    housekeeper = tasks.Housekeeper(name="stuck@test", concurrency=1)
    assert housekeeper.readiness() == (False, "starting: not reported to the database yet")
    housekeeper.report_alive()
    reported_at = housekeeper.reported_at
    assert reported_at is not None
    assert housekeeper.readiness(now=reported_at + 15)[0] is True
    assert housekeeper.readiness(now=reported_at + 16) == (
        False,
        "no report to the database for 16 s: its last round has not ended",
    )
