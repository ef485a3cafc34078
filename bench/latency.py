"""Measurement 2: notification latency at a steady rate, against the raw
channel-layer → WebSocket path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import procs
from .clients import (
    METRICS_TOKEN,
    EventListener,
    Terminals,
    User,
    close_quietly,
    http_client,
    open_socket,
    post_task,
    run_async,
    scrape_metrics,
    sign_up_many,
)
from .report import Result, Target
from .stats import fmt_ms, summary_ms

# At most this many POSTs in flight (see bench/api.py).
IN_FLIGHT = 32


@dataclass
class Steady:
    """Tasks POSTed on an open-loop schedule and what their owners heard."""

    scheduled: int
    completed: int
    failed: int
    errors: list[str]
    latencies: list[float]  # finished_at → socket, seconds
    received: dict[str, float]  # task id → Unix time its task.succeeded reached the owner's socket
    post_latencies: list[float]  # scheduled send → response, seconds
    achieved_rate: float
    replays: dict[str, float] = field(default_factory=dict)  # the web's socket replays, by reason
    machine_busy: float = math.nan  # share of the machine's cores in use while measured (0-1)


def replays(base_url: str) -> dict[str, float]:
    """The web process's count of replays from the database, by reason
    (``gap``: a live event arrived ahead of one the socket had not had)."""
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in scrape_metrics(base_url).items()
        if name == "tasklight_socket_replays_total"
    }


async def steady_tasks(api_url: str, socket_url: str, users: list[User], rate: float, duration: float) -> Steady:
    """POSTs ``rate`` tasks/s to ``api_url`` for ``duration`` s, round-robin
    over ``users`` (each with its own socket on ``socket_url``), on a fixed
    schedule whatever the answers."""
    drain = 60 + 2 * duration  # a stack that falls behind still gets to finish, within bounds
    collector: list[Terminals] = [Terminals(2 * len(users))]

    def dispatch(frame: dict[str, Any], received: float) -> None:
        collector[0](frame, received)

    sockets = [await open_socket(socket_url, user) for user in users]
    listeners = [EventListener(ws, dispatch).start() for ws in sockets]
    try:
        async with http_client(api_url, connections=IN_FLIGHT) as http:
            await asyncio.gather(*(post_task(http, user) for user in users for _ in range(2)))
            if not await collector[0].wait(60):
                raise RuntimeError("warm-up tasks did not all end within 60 s")
            count = max(1, round(rate * duration))
            phase = Terminals(count)
            phase.ignore = set(collector[0].ids)
            collector[0] = phase
            errors: list[str] = []
            post_latencies: list[float] = []

            async def one(user: User, due: float) -> None:
                try:
                    await post_task(http, user)
                    post_latencies.append(time.perf_counter() - due)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

            start = time.perf_counter() + 0.05
            machine = procs.machine_cpu()
            pending = set()
            for n in range(count):
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                job = asyncio.create_task(one(users[n % len(users)], due))
                pending.add(job)
                job.add_done_callback(pending.discard)
            sent = time.perf_counter()
            if pending:
                await asyncio.wait(pending, timeout=drain)
            for job in list(pending):
                job.cancel()
                errors.append(f"no answer within {drain:g} s of the last send")
            await phase.wait(max(1.0, drain - (time.perf_counter() - sent)))
            busy = procs.busy_share(machine, procs.machine_cpu())
            return Steady(
                scheduled=count,
                completed=len(phase.ids),
                failed=len(phase.failed),
                errors=errors,
                latencies=phase.latencies,
                received=phase.received,
                post_latencies=post_latencies,
                achieved_rate=count / (sent - start) if sent > start else math.nan,
                machine_busy=busy,
            )
    finally:
        for listener in listeners:
            await listener.stop()


async def raw_path(
    base_url: str, config: procs.Config, rate: float, count: int, env: dict[str, str]
) -> tuple[list[float], float]:
    """A socket on the minimal consumer; a publisher process group_sends
    ``count`` timestamped frames at ``rate``; returns send → receive times
    and the share of the machine's cores in use from the first measured frame
    to the last."""
    ws = await open_socket(base_url, None, path="/raw/")
    latencies: list[float] = []
    done = asyncio.Event()
    machine: list[tuple[float, float]] = []  # from the first measured frame to the last

    async def read() -> None:
        async for raw in ws:
            received = time.time()
            frame = json.loads(raw)
            if frame.get("done"):
                machine.append(procs.machine_cpu())
                done.set()
                return
            if not frame.get("warmup"):
                if not latencies:
                    machine.append(procs.machine_cpu())
                latencies.append(received - frame["sent"])

    reader = asyncio.create_task(read())
    publisher = procs.start(
        "raw-publisher",
        [sys.executable, "-m", "bench.raw_publisher", "--rate", f"{rate:g}", "--count", str(count), "--warmup", "50"],
        env,
        config.log_dir,
    )
    try:
        deadline = time.monotonic() + count / rate + 60
        while not done.is_set() and time.monotonic() < deadline:
            if not publisher.alive() and publisher.popen.returncode != 0:
                publisher.check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
    finally:
        reader.cancel()
        await close_quietly(ws)
        procs.retire(publisher)
    return latencies, procs.busy_share(*machine) if len(machine) == 2 else math.nan


def measure(config: procs.Config, options: Any, result: Result) -> None:
    rate, duration, n_users = options.rate, options.duration, options.latency_users
    count = max(1, round(rate * duration))

    # The raw path: nothing of Tasklight's, the same layer and server.
    raw_env = config.stack_env(BENCH_RAW_PREFIX=f"{config.prefix}-raw")
    raw_web, raw_url = procs.start_web(
        raw_env, config.log_dir, name="raw-web", app="bench.raw_app:application", health_path=None
    )
    raw, raw_busy = run_async(raw_path(raw_url, config, rate, count, raw_env))
    procs.retire(raw_web)
    raw_summary = summary_ms(raw)
    result.figures.update(raw_latency_ms=raw_summary, raw_machine_busy=raw_busy)
    result.say(
        f"raw path (group_send from a process with its own running loop, RedisPubSubChannelLayer → minimal "
        f"AsyncJsonWebsocketConsumer under uvicorn → client), {rate:g} msg/s: {fmt_ms(raw_summary)}"
        + ("" if len(raw) == count else f" ({len(raw)} of {count} received)")
    )
    result.say(f"  the machine's cores in use meanwhile: {raw_busy:.0%}")

    tracked = procs.commit_timestamps_tracked()
    switched = options.commit_timestamps and not tracked
    if switched:
        result.say("  (turning PostgreSQL's track_commit_timestamp on for this measurement: a restart)")
        procs.track_commit_timestamps(True)
    try:
        for topology in TOPOLOGIES:
            steady, committed = tasklight_path(
                config, rate, duration, n_users, with_commits=tracked or switched, topology=topology
            )
            report_tasklight(result, topology, steady, committed, raw_summary, raw_busy, rate, duration, n_users)
    finally:
        if switched:
            procs.track_commit_timestamps(False)


@dataclass(frozen=True)
class Topology:
    """Where the POSTs and the sockets are served."""

    key: str  # in the figures
    label: str  # in the printed lines and the target
    split: bool  # sockets on a web process of their own, the API on another


# Both, in every run: one process for everything (make run, and the
# Procfile's web line alone), and the /ws/ pool of its own that
# docs/operations.md recommends where notification latency matters.
TOPOLOGIES = (
    Topology("one_web", "one web process for the POSTs and the sockets", split=False),
    Topology("ws_web", "sockets on a web process of their own, the POSTs on another", split=True),
)


def report_tasklight(
    result: Result,
    topology: Topology,
    steady: Steady,
    committed: list[float] | None,
    raw_summary: dict[str, float],
    raw_busy: float,
    rate: float,
    duration: float,
    n_users: int,
) -> None:
    figures: dict[str, Any] = {}
    result.figures[topology.key] = figures
    summary = summary_ms(steady.latencies)
    figures.update(
        latency_ms=summary,
        post_latency_ms=summary_ms(steady.post_latencies),
        completed=steady.completed,
        scheduled=steady.scheduled,
    )
    ended = "" if steady.completed == steady.scheduled else f" ({steady.completed} of {steady.scheduled} ended)"
    result.say(f"Tasklight, {topology.label} ({rate:g} tasks/s for {duration:g} s over {n_users} users):")
    result.say(
        "  task.succeeded from the terminal statement's finished_at (before the statement runs) "
        f"→ the owner's socket: {fmt_ms(summary)}{ended}"
    )
    if committed is not None:
        summary = summary_ms(committed)
        figures["commit_latency_ms"] = summary
        result.say(
            "  from the terminal transaction's commit (PostgreSQL's commit timestamp, taken before the WAL flush) "
            f"→ the owner's socket: {fmt_ms(summary)} ({len(committed)} tasks)"
        )
    else:
        result.say("  (PostgreSQL's commit timestamps are off: the ratio is taken from finished_at)")
    result.say(
        f"  POSTs sent at {steady.achieved_rate:.1f}/s; "
        f"scheduled send → answer {fmt_ms(summary_ms(steady.post_latencies))}"
        + (f"; {len(steady.errors)} errors, first: {steady.errors[0]}" if steady.errors else "")
    )
    figures.update(machine_busy=steady.machine_busy, replays=steady.replays)
    result.say(
        f"  the machine's cores in use meanwhile: {steady.machine_busy:.0%} (the raw path's: {raw_busy:.0%}); "
        "what a path waits for the cores is in its latency"
    )
    gaps = steady.replays.get("gap", 0)
    result.say(f"  events that overtook an earlier one of their user (the socket read the database): {gaps:g}")
    ratio = summary["p99"] / raw_summary["p99"] if raw_summary["p99"] else math.nan
    figures["p99_ratio"] = ratio
    target = Target(f"latency p99 ratio (Tasklight / raw path), {topology.label}", ratio, 2, at_least=False)
    result.targets.append(target)
    result.say(f"  p99 ratio: {ratio:.2f} (target <= 2): {'met' if target.met else 'NOT met'}")


def tasklight_path(
    config: procs.Config, rate: float, duration: float, n_users: int, *, with_commits: bool, topology: Topology
) -> tuple[Steady, list[float] | None]:
    """Tasklight's own stack at a steady rate, served as ``topology`` says;
    ``with_commits`` (PostgreSQL's commit timestamps are on), also each
    task's commit → socket time."""
    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env(METRICS_TOKEN=METRICS_TOKEN)
    web, api_url = procs.start_web(env, config.log_dir, name="latency-web")
    webs = [web]
    socket_url = api_url
    if topology.split:
        ws_web, socket_url = procs.start_web(env, config.log_dir, name="latency-ws-web")
        webs.append(ws_web)
    worker = procs.start_celery_worker(env, config.log_dir, app="tasklight", queue=config.queue, name="latency-worker")

    async def client() -> Steady:
        users = await sign_up_many(api_url, n_users)
        return await steady_tasks(api_url, socket_url, users, rate, duration)

    steady = run_async(client())
    steady.replays = replays(socket_url)
    procs.retire(worker, *webs)
    if not with_commits:
        return steady, None
    # The terminal event's row is written by the terminal transaction and never updated.
    rows = procs.sql(
        config,
        "SELECT task->>'id', extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM live_event "
        "WHERE kind = 'task.succeeded' AND task->>'id' = ANY(%s)",
        (list(steady.received),),
    )
    return steady, [steady.received[str(task_id)] - float(str(at)) for task_id, at in rows if at is not None]
