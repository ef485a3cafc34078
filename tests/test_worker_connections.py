"""A worker's pool process keeps its PostgreSQL connection from task to task
(WORKER_CONN_MAX_AGE) instead of opening a new backend per task, and names
it in pg_stat_activity (DATABASE_APPLICATION_NAME)."""

from __future__ import annotations

import pytest

from .stack import Account, terminal_for

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
