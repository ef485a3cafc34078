"""200 clients at once, each its own user, socket and API calls, queueing 50
short tasks each, on real processes: nothing lost, nothing announced twice,
no 5xx. Prints its figures (docs/load.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import time
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import connect

from live.models import Event
from workloads.models import Task

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

# LOAD_CLIENTS / LOAD_TASKS_EACH shrink it while developing.
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "200"))
TASKS_EACH = int(os.environ.get("LOAD_TASKS_EACH", "50"))
TERMINAL = ("task.succeeded", "task.failed", "task.cancelled")


async def one_client(base_url: str, token: str, report: dict[str, Any]) -> None:
    headers = {"Authorization": f"Token {token}"}
    async with (
        connect(
            base_url.replace("http", "ws", 1) + "/ws/", additional_headers=headers, max_queue=None, open_timeout=120
        ) as ws,
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http,
    ):
        assert json.loads(await ws.recv())["type"] == "hello"
        queued = []
        for _ in range(TASKS_EACH):
            started = time.perf_counter()
            response = await http.post("/api/tasks/", json={"kind": "simulate", "params": {"seconds": 0}})
            report["post_seconds"].append(time.perf_counter() - started)
            report["statuses"].append(response.status_code)
            if response.status_code == 202:
                queued.append(response.json()["id"])
        finished: list[str] = []
        ids: list[int] = []
        while len(set(finished)) < len(queued):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 240))
            if frame["type"] == "event":
                ids.append(frame["id"])
                if frame["event"] in TERMINAL:
                    finished.append(frame["task"]["id"])
        report["terminal_events"].append(len(finished))
        report["duplicates"] += len(finished) - len(set(finished)) + len(ids) - len(set(ids))
        report["out_of_order"] += sum(1 for a, b in itertools.pairwise(ids) if b <= a)


async def run_clients(base_url: str, tokens: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "post_seconds": [],
        "statuses": [],
        "terminal_events": [],
        "duplicates": 0,
        "out_of_order": 0,
    }
    await asyncio.gather(*(one_client(base_url, token, report) for token in tokens))
    return report


@pytest.mark.timeout(900)
def test_two_hundred_clients_fifty_tasks_each(private_stack) -> None:
    running = private_stack(TASK_RATE_LIMIT="1000/min")
    for _ in range(2):
        running.start_worker(concurrency=2)
    # Users made here, with their tokens: the test is about the load, not about
    # hashing 200 passwords on the server.
    tokens = [
        Token.objects.create(user=User.objects.create_user(f"load-{n}", password=None)).key for n in range(CLIENTS)
    ]
    started = time.monotonic()
    report = asyncio.run(run_clients(running.base_url, tokens))
    seconds = time.monotonic() - started

    statuses = report["statuses"]
    assert len(statuses) == CLIENTS * TASKS_EACH
    assert [s for s in statuses if s >= 500] == []
    assert set(statuses) == {202}
    assert report["terminal_events"] == [TASKS_EACH] * CLIENTS
    assert report["duplicates"] == 0
    assert report["out_of_order"] == 0
    assert Task.objects.filter(owner__username__startswith="load-").exclude(status="succeeded").count() == 0
    assert Task.objects.filter(owner__username__startswith="load-").count() == CLIENTS * TASKS_EACH
    terminal = Event.objects.filter(user__username__startswith="load-", kind__in=TERMINAL)
    assert terminal.count() == terminal.values("task__id").distinct().count() == CLIENTS * TASKS_EACH

    post = sorted(report["post_seconds"])
    print(
        f"\nload: {CLIENTS} clients x {TASKS_EACH} tasks = {CLIENTS * TASKS_EACH} tasks in {seconds:.1f} s "
        f"({CLIENTS * TASKS_EACH / seconds:.0f} tasks/s end to end); POST /api/tasks/ p50 "
        f"{statistics.median(post) * 1000:.0f} ms, p99 {post[int(len(post) * 0.99)] * 1000:.0f} ms; "
        "0 lost, 0 duplicate, 0 5xx"
    )
