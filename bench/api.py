"""Measurement 4: POST /api/tasks/ at a steady rate, and GET /api/tasks/ for a
user with many tasks in a large table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import procs
from .clients import User, http_client, post_task, run_async, seed_users_sql, sign_up_many
from .report import Result, Target
from .stats import fmt_ms, summary_ms

# At most this many requests in flight: each one the web process is serving
# holds a PostgreSQL connection (or waits for one from its pool), and the
# shared server allows 100 in all. Below saturation far fewer are in flight
# (rate times latency); above it, requests wait in the client, and their
# latency, counted from the schedule, shows it.
IN_FLIGHT = 32


@dataclass
class OpenLoop:
    """Requests sent on a fixed schedule, whatever the answers: latency counts
    from the scheduled moment (no coordinated omission) and from the send."""

    from_schedule: list[float] = field(default_factory=list)
    from_send: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    achieved_rate: float = 0.0


async def open_loop(request: Callable[[int], Awaitable[None]], rate: float, duration: float) -> OpenLoop:
    loop = OpenLoop()
    count = max(1, round(rate * duration))

    async def one(n: int, due: float) -> None:
        sent = time.perf_counter()
        try:
            await request(n)
        except Exception as exc:
            loop.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        done = time.perf_counter()
        loop.from_schedule.append(done - due)
        loop.from_send.append(done - sent)

    start = time.perf_counter() + 0.05
    pending: set[asyncio.Task[None]] = set()
    for n in range(count):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        job = asyncio.create_task(one(n, due))
        pending.add(job)
        job.add_done_callback(pending.discard)
    finished_sending = time.perf_counter()
    if pending:
        await asyncio.wait(pending, timeout=60)
    for job in list(pending):  # bounded: what has not answered by now counts as an error
        job.cancel()
        loop.errors.append("no answer within 60 s of the last send")
    loop.achieved_rate = count / (finished_sending - start) if finished_sending > start else 0.0
    return loop


async def post_phase(
    base_url: str, users: list[User], rate: float, duration: float, warm_up: float
) -> tuple[OpenLoop, OpenLoop]:
    """The warm-up at the same rate first, not counted: a web process that has
    just started opens its database and broker connections and its request
    threads as the load reaches it, once. Both are returned."""
    async with http_client(base_url, connections=IN_FLIGHT) as http:
        for user in users:
            await post_task(http, user)

        async def request(n: int) -> None:
            await post_task(http, users[n % len(users)])

        first = await open_loop(request, rate, warm_up)
        return first, await open_loop(request, rate, duration)


async def list_phase(base_url: str, user: User, rate: float, duration: float) -> OpenLoop:
    async with http_client(base_url, connections=IN_FLIGHT) as http:

        async def request(n: int) -> None:
            response = await http.get("/api/tasks/", headers=user.headers)
            if response.status_code != 200:
                raise RuntimeError(f"GET /api/tasks/ answered {response.status_code}: {response.text[:200]}")
            if len(response.json()["results"]) != 20:
                raise RuntimeError("GET /api/tasks/ did not answer a full page")

        for n in range(10):  # warm-up
            await request(n)
        return await open_loop(request, rate, duration)


def seed_tasks(config: procs.Config, owners: list[User], rows: int) -> None:
    """``rows`` finished tasks in one INSERT … SELECT, spread evenly over
    ``owners``, one second apart going back from now."""
    procs.sql(
        config,
        "INSERT INTO workloads_task (id, owner_id, kind, params, status, progress, result, error, created_at, "
        "started_at, finished_at, sent_at) "
        "SELECT gen_random_uuid(), (%s::bigint[])[1 + mod(g, %s)], 'noop', '{}'::jsonb, 'succeeded', 100, "
        "'{}'::jsonb, '', t, t, t, t "
        "FROM (SELECT g, now() - make_interval(secs => g) AS t FROM generate_series(1, %s) AS g) AS s",
        ([owner.user_id for owner in owners], len(owners), rows),
    )
    procs.sql(config, "VACUUM ANALYZE workloads_task")


def explain_first_page(config: procs.Config, user: User) -> str:
    """EXPLAIN ANALYZE of the query behind the list's first page."""
    rows = procs.sql(
        config,
        "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM workloads_task WHERE owner_id = %s "
        "ORDER BY created_at DESC, id DESC LIMIT 21",
        (user.user_id,),
    )
    lines = [str(row[0]).strip() for row in rows]
    return f"{lines[0]} … {lines[-1]}"


def measure(config: procs.Config, options: Any, result: Result) -> None:
    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env()
    users: list[User] = []
    # POSTs on one web process, then on several sharing the port (uvicorn's
    # WEB_CONCURRENCY), as a deployment runs one per core; the target is
    # checked on the last.
    counts = [1] + ([options.api_web_processes] if options.api_web_processes > 1 else [])
    post_summary: dict[str, float] = {}
    for processes in counts:
        web, base_url = procs.start_web(
            {**env, "WEB_CONCURRENCY": str(processes)}, config.log_dir, name=f"api-web-{processes}"
        )
        worker = None
        if options.api_worker:
            worker = procs.start_celery_worker(
                env, config.log_dir, app="tasklight", queue=config.queue, name=f"api-worker-{processes}"
            )
        users = users or run_async(sign_up_many(base_url, options.api_users))
        warm, post = run_async(post_phase(base_url, users, options.api_rate, options.api_duration, options.api_warm_up))
        procs.retire(*[proc for proc in (worker, web) if proc is not None])
        procs.delete_queue(config.queue)
        post_summary = summary_ms(post.from_schedule)
        suffix = "" if processes == 1 else f"_{processes}_web"
        result.figures.update(
            {
                f"post_latency_ms{suffix}": post_summary,
                f"post_service_ms{suffix}": summary_ms(post.from_send),
                f"post_errors{suffix}": len(post.errors),
                f"post_achieved_rate{suffix}": post.achieved_rate,
            }
        )
        result.say(
            f"POST /api/tasks/ at {options.api_rate:g}/s for {options.api_duration:g} s over {options.api_users} "
            f"users, {processes} web process{'es' if processes > 1 else ''} "
            f"({'a worker running' if options.api_worker else 'no worker: the queue fills and is deleted after'}; "
            f"sent at {post.achieved_rate:.1f}/s): {fmt_ms(post_summary)}"
            + (f"; {len(post.errors)} errors, first: {post.errors[0]}" if post.errors else "")
        )
        result.say(f"  from the send instead of the schedule: {fmt_ms(summary_ms(post.from_send))}")
        result.say(
            f"  the {options.api_warm_up:g} s of warm-up at that rate before, not counted: "
            f"{fmt_ms(summary_ms(warm.from_schedule))}"
        )
    post_target = f"POST /api/tasks/ p99 (ms) at the steady rate, {counts[-1]} web process(es)"

    web, base_url = procs.start_web(env, config.log_dir, name="api-web-list")
    groups = max(1, round(options.list_rows / options.list_user_rows))
    owners = seed_users_sql(config, groups, "list")
    started = time.monotonic()
    seed_tasks(config, owners, options.list_rows)
    total = procs.sql(config, "SELECT count(*) FROM workloads_task")[0][0]
    mine = procs.sql(config, "SELECT count(*) FROM workloads_task WHERE owner_id = %s", (owners[0].user_id,))[0][0]
    result.say(
        f"seeded {options.list_rows} tasks over {groups} users in {time.monotonic() - started:.1f} s "
        f"(table: {total} rows; the listing user: {mine})"
    )
    result.say(f"  {explain_first_page(config, owners[0])}")
    listed = run_async(list_phase(base_url, owners[0], options.list_rate, options.list_duration))
    procs.retire(web)
    list_summary = summary_ms(listed.from_schedule)
    result.figures.update(
        list_latency_ms=list_summary,
        list_service_ms=summary_ms(listed.from_send),
        list_errors=len(listed.errors),
        list_table_rows=total,
        list_user_rows=mine,
    )
    result.say(
        f"GET /api/tasks/ (first page of 20) for a user with {mine} tasks in a table of {total}, "
        f"{options.list_rate:g}/s for {options.list_duration:g} s: {fmt_ms(list_summary)}"
        + (f"; {len(listed.errors)} errors, first: {listed.errors[0]}" if listed.errors else "")
    )
    result.say(f"  from the send instead of the schedule: {fmt_ms(summary_ms(listed.from_send))}")
    result.targets += [
        Target(post_target, post_summary["p99"], 25, at_least=False),
        Target("GET /api/tasks/ p99 (ms) at 1M rows", list_summary["p99"], 20, at_least=False),
    ]
    for target in result.targets:
        result.say(target.describe())
