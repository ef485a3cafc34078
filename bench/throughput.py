"""Measurement 1: end-to-end throughput against the bare Celery drain rate."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

from . import procs
from .clients import (
    EventListener,
    Terminals,
    User,
    http_client,
    open_socket,
    post_task,
    run_async,
    sign_up_many,
)
from .report import Result, Target
from .stats import fmt_ms, summary_ms


@dataclass
class Drain:
    tasks: int
    drained: int
    rate: float  # tasks/s from the first task executed to the last
    publish_rate: float


def bare_drain(config: procs.Config, tasks: int, *, like_tasklight: bool = False, concurrency: int = 2) -> Drain:
    """Publishes ``tasks`` no-op messages, then starts ``celery worker -c 2``
    (prefork) and times the drain from the first task run to the last."""
    queue = f"{config.queue}-bare"
    key = f"{config.prefix}-bare"
    env = {key_: value for key_, value in os.environ.items() if key_ not in procs.CONFIGURATION}
    env.update(
        BENCH_BARE_QUEUE=queue,
        BENCH_BARE_KEY=key,
        BENCH_BARE_BROKER=procs.BROKER_URL,
        BENCH_BARE_REDIS=procs.REDIS_URL,
        BENCH_BARE_LIKE_TASKLIGHT="1" if like_tasklight else "0",
        # --env CELERY_EVENTS=1 turns the task events on for Tasklight and
        # for the drain that mirrors its settings.
        CELERY_EVENTS=config.extra_env.get("CELERY_EVENTS", "0"),
        PYTHONPATH=str(procs.ROOT),
        PYTHONUNBUFFERED="1",
    )
    procs.delete_queue(queue)
    client = redis.Redis.from_url(procs.REDIS_URL, socket_timeout=10)
    try:
        client.delete(f"{key}:count", f"{key}:first", f"{key}:last")
        label = "bare-like-tasklight" if like_tasklight else "bare"
        procs.run_command(
            [sys.executable, "-m", "bench.bare_celery", str(tasks)], env, config.log_dir, f"{label}-publish"
        )
        published = (config.log_dir / f"{label}-publish.log").read_text().split()
        publish_rate = float(published[published.index("published") + 2])
        worker = procs.start(
            f"{label}-worker",
            [
                str(procs.BIN / "celery"),
                "-A",
                "bench.bare_celery",
                "worker",
                "--loglevel=WARNING",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                f"--queues={queue}",
                f"--hostname={label}-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            config.log_dir,
        )
        deadline = time.monotonic() + max(60.0, tasks / 100)
        count = 0
        while time.monotonic() < deadline:
            worker.check_alive()
            count = int(client.get(f"{key}:count") or 0)
            if count >= tasks:
                break
            time.sleep(0.1)
        first = client.zscore(f"{key}:first", "t")
        last = client.zscore(f"{key}:last", "t")
        procs.retire(worker)
        rate = (count - 1) / (last - first) if first is not None and last is not None and last > first else math.nan
        return Drain(tasks, count, rate, publish_rate)
    finally:
        client.delete(f"{key}:count", f"{key}:first", f"{key}:last")
        client.close()
        procs.delete_queue(queue)


@dataclass
class EndToEnd:
    tasks: int
    completed: int
    rate: float  # tasks/s, first POST to the last task.succeeded received
    post_rate: float
    post_latency: dict[str, float]
    notify_latency: dict[str, float]
    failed: int
    cpu: dict[str, float]


async def end_to_end(
    base_url: str, users: list[User], tasks: int, limit: float, cpu: Any, warmup_per_user: int = 2
) -> EndToEnd:
    """Each user has its own socket and POSTs its share of ``tasks``, one
    request at a time; all users at once."""
    collector: list[Terminals] = [Terminals(warmup_per_user * len(users))]

    def dispatch(frame: dict[str, Any], received: float) -> None:
        collector[0](frame, received)

    sockets = [await open_socket(base_url, user) for user in users]
    listeners = [EventListener(ws, dispatch).start() for ws in sockets]
    try:
        async with http_client(base_url) as http:
            # Warm-up: connections, imports, the worker's pool processes.
            await asyncio.gather(*(post_task(http, user) for user in users for _ in range(warmup_per_user)))
            if not await collector[0].wait(60):
                raise RuntimeError(f"warm-up: {len(collector[0].ids)} of {collector[0].expected} tasks ended in 60 s")
            phase = Terminals(tasks)
            phase.ignore = set(collector[0].ids)
            collector[0] = phase
            shares = [tasks // len(users) + (1 if n < tasks % len(users) else 0) for n in range(len(users))]
            post_times: list[float] = []

            async def user_loop(user: User, count: int) -> None:
                for _ in range(count):
                    _, elapsed = await post_task(http, user)
                    post_times.append(elapsed)

            cpu_before = cpu()
            started = time.time()
            await asyncio.wait_for(
                asyncio.gather(*(user_loop(user, count) for user, count in zip(users, shares, strict=True))),
                limit,
            )
            posted = time.time()
            await phase.wait(started + limit - time.time())
            await asyncio.sleep(1.2)  # PostgreSQL flushes its statistics once a second
            cpu_used = procs.cpu_delta(cpu_before, cpu())
            completed = len(phase.ids)
            elapsed = (phase.last_received - started) if completed else math.nan
            return EndToEnd(
                tasks=tasks,
                completed=completed,
                rate=completed / elapsed if completed else math.nan,
                post_rate=tasks / (posted - started),
                post_latency=summary_ms(post_times),
                notify_latency=summary_ms(phase.latencies),
                failed=len(phase.failed),
                cpu=cpu_used,
            )
    finally:
        for listener in listeners:
            await listener.stop()


def cpu_line(cpu: dict[str, float], tasks: int) -> str:
    """CPU per task by process; the services' figures are machine-wide (other
    people's tests on this machine count too)."""
    if not tasks:
        return "CPU: no tasks"
    used = {name: seconds for name, seconds in cpu.items() if not name.startswith("pg:")}
    parts = [f"{name} {1000 * seconds / tasks:.2f}" for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])]
    return "CPU ms per task (services: machine-wide): " + ", ".join(parts)


def pg_line(cpu: dict[str, float], tasks: int) -> str:
    """PostgreSQL's own counters for the run's database, per task."""
    if not tasks:
        return "PostgreSQL: no tasks"
    per = {name.removeprefix("pg:"): value / tasks for name, value in cpu.items() if name.startswith("pg:")}
    if set(per) != set(procs.PG_COUNTERS):
        return "PostgreSQL per task: not read"
    return (
        f"PostgreSQL per task (this database only): {per['sessions']:.2f} connections opened, "
        f"{per['active_time']:.2f} ms running statements, {per['xact_commit']:.1f} commits, "
        f"{per['tup_inserted']:.1f} rows inserted, {per['tup_updated']:.1f} updated, {per['tup_fetched']:.1f} fetched"
    )


def measure(config: procs.Config, options: Any, result: Result) -> None:
    tasks, users, drain_tasks = options.tasks, options.users, options.drain_tasks
    # The ceiling first, on a machine with nothing of ours running.
    bare = bare_drain(config, drain_tasks)
    result.figures["bare_drain_rate"] = bare.rate
    result.figures["bare_publish_rate"] = bare.publish_rate
    result.say(
        f"bare Celery drain (no-op, ignore_result, RabbitMQ, prefork -c 2): {bare.rate:.0f} tasks/s "
        f"({bare.drained}/{bare.tasks} drained; published from one process at {bare.publish_rate:.0f}/s)"
    )
    if options.bare_like_tasklight:
        like = bare_drain(config, drain_tasks, like_tasklight=True)
        result.figures["bare_like_tasklight_drain_rate"] = like.rate
        result.say(
            f"bare Celery with Tasklight's Celery settings (acks_late, prefetch 1): {like.rate:.0f} "
            f"tasks/s ({like.drained}/{like.tasks})"
        )

    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env()
    web, base_url = procs.start_web(env, config.log_dir, name="throughput-web")
    worker = procs.start_celery_worker(
        env,
        config.log_dir,
        app="tasklight",
        queue=config.queue,
        name="throughput-worker",
        concurrency=options.worker_concurrency,
    )

    def cpu() -> dict[str, float]:
        counters = {f"pg:{name}": value for name, value in procs.pg_counters(config).items()}
        return {**procs.cpu_snapshot({"web": web, "worker": worker}), **counters}

    async def client() -> EndToEnd:
        signed_up = await sign_up_many(base_url, users)
        return await end_to_end(base_url, signed_up, tasks, limit=max(120.0, tasks / 5), cpu=cpu)

    e2e = run_async(client())
    procs.retire(worker, web)
    result.figures.update(
        tasklight_rate=e2e.rate,
        tasklight_completed=e2e.completed,
        tasklight_post_rate=e2e.post_rate,
        tasklight_post_latency_ms=e2e.post_latency,
        tasklight_notify_latency_ms=e2e.notify_latency,
        cpu_seconds=e2e.cpu,
    )
    result.say(
        "Tasklight end to end (POST → owner's socket hears task.succeeded; "
        f"1 web + 1 worker -c {options.worker_concurrency}, {users} users each with a socket, POSTing at once): "
        f"{e2e.rate:.0f} tasks/s ({e2e.completed}/{e2e.tasks} tasks"
        f"{f', {e2e.failed} not succeeded' if e2e.failed else ''})"
    )
    result.say(f"  POSTs answered at {e2e.post_rate:.0f}/s; POST latency {fmt_ms(e2e.post_latency)}")
    result.say(f"  commit → socket under this load: {fmt_ms(e2e.notify_latency)}")
    result.say(f"  {cpu_line(e2e.cpu, e2e.completed)}")
    result.say(f"  {pg_line(e2e.cpu, e2e.completed)}")
    ratio = e2e.rate / bare.rate if bare.rate else math.nan
    result.figures["ratio"] = ratio
    target = Target("throughput ratio (Tasklight / bare Celery)", ratio, 1 / 3, at_least=True)
    result.targets.append(target)
    result.say(f"ratio: {ratio:.3f} of the bare drain rate (target >= 0.333): {'met' if target.met else 'NOT met'}")
