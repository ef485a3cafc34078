"""Flower, as operators run it next to a deployment (docs/operations.md): it
sees the workers through Celery's events and follows a task by its Tasklight
id, behind basic auth."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from . import stack as processes
from .stack import HTTP_TIMEOUT, Account, free_port, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

FLOWER_USER = "operator"
FLOWER_PASSWORD = "flower-test-passphrase"


def worker_hostname(worker: processes.Process) -> str:
    match = re.search(r"([\w.-]+@[\w.-]+) ready\.", worker.log())
    assert match, worker.log()
    return match.group(1)


def test_flower_shows_the_worker_and_follows_a_task_by_its_id(private_stack: Any) -> None:
    running = private_stack()
    # Celery's task events are off by default (settings.CELERY_EVENTS): a
    # deployment that runs Flower turns them on for its workers.
    worker = running.start_worker(concurrency=1, CELERY_EVENTS="1")
    hostname = worker_hostname(worker)
    port = free_port()
    flower = processes.start(
        "flower",
        [
            "celery",
            "-A",
            "tasklight",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}",
        ],
        running.worker_env,
        running.log_dir,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if flower.popen.poll() is not None:
                raise RuntimeError(f"flower exited:\n{flower.log()}")
            return httpx.get(f"{base_url}/healthcheck", timeout=2).text == "OK"

        wait_for(answers, timeout=60, what="Flower to answer /healthcheck")
        # Its API is closed to whoever merely reaches the port.
        assert httpx.get(f"{base_url}/api/workers", timeout=HTTP_TIMEOUT).status_code == 401
        assert httpx.get(f"{base_url}/api/tasks", auth=(FLOWER_USER, "wrong"), timeout=HTTP_TIMEOUT).status_code == 401

        with httpx.Client(base_url=base_url, auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=HTTP_TIMEOUT) as api:
            # Alive from its heartbeat events: Flower's event stream is connected.
            wait_for(
                lambda: api.get("/api/workers", params={"status": "true"}).json().get(hostname) is True,
                timeout=30,
                what=f"Flower to hear {hostname}'s heartbeats",
            )
            # And through a remote-control inspect, with the worker's queue.
            inspected = wait_for(
                lambda: api.get("/api/workers", params={"refresh": "true", "workername": hostname}).json(),
                timeout=30,
                what=f"Flower to inspect {hostname}",
            )
            queues = [queue["name"] for queue in inspected[hostname]["active_queues"]]
            assert queues == [running.env["TASKLIGHT_QUEUE"]]

            alice = Account.sign_up(running.base_url)
            task_id = alice.queue("simulate", seconds=0.2)["id"]

            def succeeded() -> dict[str, Any]:
                response = api.get(f"/api/task/info/{task_id}")
                if response.status_code == 200 and response.json()["state"] == "SUCCESS":
                    return dict(response.json())
                return {}

            info = wait_for(succeeded, timeout=30, what=f"Flower to see task {task_id} succeed")
            assert (info["name"], info["worker"]) == ("tasklight.run_task", hostname)
            # The Celery task id is the Tasklight task id.
            assert task_id in api.get("/api/tasks", params={"workername": hostname}).json()
            # Flower's own Prometheus metrics: its registry is the one our
            # metrics module fills on import, without the web's task count
            # (which queried from Flower's event loop: a 500 every scrape).
            scraped = api.get("/metrics")
            assert scraped.status_code == 200, scraped.text[:500]
            assert "flower_" in scraped.text and "tasklight_tasks{" not in scraped.text
    finally:
        flower.stop()
