"""Measurement 6 (no target): the web process's CPU per request, one request
at a time. Under load the figures of measurements 1-4 mix queueing, the
machine's other tenants and every process on it; one request at a time, the
web process's own CPU per request is steady from run to run, which is what a
change to the request path needs to be judged by (docs/benchmarks.md)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from . import procs
from .clients import HttpClient, User, http_client, post_task, run_async, sign_up_many
from .report import Result
from .stats import fmt_ms, summary_ms

WARM_UP = 20


async def one_at_a_time(base_url: str, user: User, web: procs.Proc, requests: int) -> dict[str, dict[str, Any]]:
    missing = f"/api/tasks/{uuid.uuid4()}/"

    async def health(http: HttpClient) -> None:
        if (await http.get("/healthz")).status_code != 200:
            raise RuntimeError("/healthz did not answer 200")

    async def page(http: HttpClient) -> None:
        if (await http.get("/api/tasks/", headers=user.headers)).status_code != 200:
            raise RuntimeError("GET /api/tasks/ did not answer 200")

    async def not_found(http: HttpClient) -> None:
        if (await http.get(missing, headers=user.headers)).status_code != 404:
            raise RuntimeError("GET of a missing task did not answer 404")

    async def new_task(http: HttpClient) -> None:
        await post_task(http, user)

    kinds = {
        "GET /healthz (Django, no DRF, no database)": health,
        "GET /api/tasks/ (first page of 20)": page,
        "GET /api/tasks/<missing>/ (404)": not_found,
        "POST /api/tasks/ (noop)": new_task,
    }
    figures: dict[str, dict[str, Any]] = {}
    async with http_client(base_url, connections=1) as http:
        for label, request in kinds.items():
            for _ in range(WARM_UP):
                await request(http)
            walls: list[float] = []
            before = procs.cpu_snapshot({"web": web})["web"]
            for _ in range(requests):
                started = time.perf_counter()
                await request(http)
                walls.append(time.perf_counter() - started)
            used = procs.cpu_snapshot({"web": web})["web"] - before
            figures[label] = {"web_cpu_ms": 1000 * used / requests, "latency_ms": summary_ms(walls)}
    return figures


def measure(config: procs.Config, options: Any, result: Result) -> None:
    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env()
    web, base_url = procs.start_web(env, config.log_dir, name="cost-web")
    (user,) = run_async(sign_up_many(base_url, 1))
    figures = run_async(one_at_a_time(base_url, user, web, options.cost_requests))
    procs.retire(web)
    procs.delete_queue(config.queue)  # no worker: the POSTed tasks are dropped with it
    result.figures.update(requests=figures)
    result.say(f"one request at a time, {options.cost_requests} of each, after {WARM_UP} to warm up; 1 web process")
    for label, figure in figures.items():
        result.say(f"  {label}: web CPU {figure['web_cpu_ms']:.2f} ms per request; {fmt_ms(figure['latency_ms'])}")
