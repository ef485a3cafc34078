"""Measurement 3: idle authenticated sockets on one web process, its memory per
socket, and one user's event latency while they are all open."""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from . import procs
from .clients import (
    METRICS_TOKEN,
    EventListener,
    Terminals,
    User,
    http_client,
    open_socket,
    post_task,
    run_async,
    scrape_metrics,
    seed_users_sql,
)
from .report import Result, Target
from .stats import fmt_ms, summary_ms

CONNECT_CONCURRENCY = 50
PROBE_RATE = 10.0  # the probe user's tasks per second


@dataclass
class Held:
    wanted: int
    opened: int = 0
    held: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    open_seconds: float = math.nan
    rss_idle_kib: int = 0
    rss_open_kib: int = 0
    fds_open: int = 0
    probe: list[float] = field(default_factory=list)
    probe_completed: int = 0
    held_after_probe: int = 0
    gc_open: GcPauses | None = None  # while the sockets opened
    churned: int = 0  # sockets closed and opened again in the churn phase
    churn_handshakes: list[float] = field(default_factory=list)
    churn_probe: list[float] = field(default_factory=list)
    churn_probe_completed: int = 0
    gc_churn: GcPauses | None = None  # during the churn phase
    rss_after_churn_kib: int = 0


@dataclass
class GcPauses:
    """The web process's full collections (tasklight_gc_pause_seconds, generation 2)."""

    count: float
    seconds: float
    longest: float

    @classmethod
    def read(cls, base_url: str) -> GcPauses:
        samples = scrape_metrics(base_url)
        full = frozenset({("generation", "2")})
        return cls(
            count=samples.get(("tasklight_gc_pause_seconds_count", full), math.nan),
            seconds=samples.get(("tasklight_gc_pause_seconds_sum", full), math.nan),
            longest=samples.get(("tasklight_gc_longest_pause_seconds", frozenset()), math.nan),
        )

    def since(self, earlier: GcPauses) -> GcPauses:
        """The collections since ``earlier`` (the longest is the process's own)."""
        return GcPauses(self.count - earlier.count, self.seconds - earlier.seconds, self.longest)

    def describe(self) -> str:
        return (
            f"{self.count:.0f} full collections, {self.seconds:.1f} s in all; "
            f"longest pause so far {self.longest * 1000:.0f} ms"
        )


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def post_probe_tasks(api_url: str, probe: User, phase: Terminals) -> None:
    """POSTs the probe user's ``phase.expected`` tasks at PROBE_RATE, then
    waits (bounded) for their terminal events."""
    async with http_client(api_url) as http:
        begin = time.perf_counter()
        for n in range(phase.expected):
            delay = begin + n / PROBE_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await post_task(http, probe)
        await phase.wait(60)


async def hold_sockets(
    base_url: str,
    web: procs.Proc,
    users: list[User],
    probe: User,
    wanted: int,
    probe_tasks: int,
    deadline: float,
    deflate: bool = True,
    churn: float = 0.0,
    churn_seconds: float = 0.0,
    api_url: str = "",
) -> Held:
    held = Held(wanted)
    sockets: list[ClientConnection] = []
    owners: list[User] = []
    # Warm the web process up (imports, first connections) before its idle RSS.
    async with http_client(base_url) as http:
        warm = await open_socket(base_url, users[0])
        await warm.close()
        await post_task(http, probe)
    probe_ws = await open_socket(base_url, probe)
    collector: list[Terminals] = [Terminals(1)]

    def dispatch(frame: dict[str, Any], received: float) -> None:
        collector[0](frame, received)

    listener = EventListener(probe_ws, dispatch).start()
    await collector[0].wait(30)
    await asyncio.sleep(1.0)
    held.rss_idle_kib = web.rss_kib()
    gc_idle = GcPauses.read(base_url)

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    give_up = max(500, wanted // 10)
    started = time.monotonic()

    async def one(n: int) -> None:
        if held.failures >= give_up or time.monotonic() > deadline:
            return
        async with gate:
            if held.failures >= give_up or time.monotonic() > deadline:
                return
            try:
                ws = await open_socket(base_url, users[n % len(users)], within=60, deflate=deflate)
                sockets.append(ws)
                owners.append(users[n % len(users)])
                held.opened += 1
            except Exception as exc:
                held.failures += 1
                if len(held.errors) < 5:
                    held.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    try:
        await asyncio.gather(*(one(n) for n in range(wanted)))
        held.open_seconds = time.monotonic() - started
        await asyncio.sleep(2.0)
        held.held = sum(1 for ws in sockets if ws.state is State.OPEN)
        held.rss_open_kib = web.rss_kib()
        held.fds_open = open_fds(web.pid)
        gc_open = GcPauses.read(base_url)
        held.gc_open = gc_open.since(gc_idle)

        # One user's events while every socket is open.
        phase = Terminals(probe_tasks)
        phase.ignore = set(collector[0].ids)
        collector[0] = phase
        await post_probe_tasks(base_url, probe, phase)
        held.probe = phase.latencies
        held.probe_completed = len(phase.ids)
        held.held_after_probe = sum(1 for ws in sockets if ws.state is State.OPEN)

        if churn > 0 and sockets:
            # Sockets come and go (reloads, networks changing) while the
            # probe user's tasks go on: what the full collections this
            # brings cost the sockets that stay.
            gc_before = GcPauses.read(base_url)
            phase = Terminals(round(churn_seconds * PROBE_RATE))
            phase.ignore = collector[0].ids | collector[0].ignore
            collector[0] = phase

            async def reconnect() -> None:
                begin = time.perf_counter()
                for k in range(round(churn * churn_seconds)):
                    await asyncio.sleep(max(0.0, begin + k / churn - time.perf_counter()))
                    n = k % len(sockets)  # the oldest first, round the list
                    await sockets[n].close()
                    started = time.perf_counter()
                    sockets[n] = await open_socket(base_url, owners[n], within=60, deflate=deflate)
                    held.churn_handshakes.append(time.perf_counter() - started)
                    held.churned += 1

            # The probe's tasks on another web process: a pause of the
            # sockets' process must not hold back the tasks whose events it delays.
            await asyncio.gather(reconnect(), post_probe_tasks(api_url or base_url, probe, phase))
            held.churn_probe = phase.latencies
            held.churn_probe_completed = len(phase.ids)
            held.gc_churn = GcPauses.read(base_url).since(gc_before)
            held.rss_after_churn_kib = web.rss_kib()
    finally:
        # Dropped, not closed politely: 10,000 closing handshakes would take
        # longer than the measurement, and the web process stops next.
        for ws in sockets:
            ws.transport.abort()
        await listener.stop()
        procs.retire(web)
    return held


def measure(config: procs.Config, options: Any, result: Result) -> None:
    wanted, n_users, probe_tasks = options.sockets, options.socket_users, options.probe_tasks
    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env(METRICS_TOKEN=METRICS_TOKEN)
    web, base_url = procs.start_web(env, config.log_dir, name="sockets-web", nofile=wanted + 4096)
    worker = procs.start_celery_worker(env, config.log_dir, app="tasklight", queue=config.queue, name="sockets-worker")
    users = seed_users_sql(config, n_users, "sock")
    probe = seed_users_sql(config, 1, "probe")[0]
    limits = Path(f"/proc/{web.pid}/limits").read_text().splitlines()
    web_nofile = next(line.split()[3] for line in limits if "open files" in line)
    deadline = time.monotonic() + max(120.0, wanted * 0.05)
    deflate = not options.sockets_no_deflate
    churn, churn_seconds = options.socket_churn, options.churn_seconds
    api_web, api_url = procs.start_web(env, config.log_dir, name="sockets-api-web") if churn > 0 else (None, "")
    deadline += churn_seconds if churn > 0 else 0.0
    try:
        held = run_async(
            hold_sockets(
                base_url, web, users, probe, wanted, probe_tasks, deadline, deflate, churn, churn_seconds, api_url
            )
        )
    finally:
        procs.retire(worker)
        if api_web is not None:
            procs.retire(api_web)

    per_socket = (held.rss_open_kib - held.rss_idle_kib) / held.held if held.held else math.nan
    probe_summary = summary_ms(held.probe)
    result.figures.update(
        wanted=wanted,
        held=held.held,
        held_after_probe=held.held_after_probe,
        failures=held.failures,
        open_seconds=held.open_seconds,
        rss_idle_kib=held.rss_idle_kib,
        rss_open_kib=held.rss_open_kib,
        kib_per_socket=per_socket,
        probe_latency_ms=probe_summary,
    )
    if held.gc_open is not None:
        result.figures["gc_while_opening"] = vars(held.gc_open)
    result.say(
        f"held {held.held} of {wanted} idle authenticated sockets on one uvicorn process ({n_users} users; "
        f"opened in {held.open_seconds:.1f} s, {CONNECT_CONCURRENCY} handshakes at a time; "
        f"{held.failures} failed; web open-file limit {web_nofile}, {held.fds_open} fds open; clients "
        f"{'offer permessage-deflate, as browsers do' if deflate else 'do not offer permessage-deflate'})"
        + (f"; first errors: {held.errors[:2]}" if held.errors else "")
    )
    result.say(
        f"web RSS {held.rss_idle_kib / 1024:.1f} MiB idle → {held.rss_open_kib / 1024:.1f} MiB with them open: "
        f"{per_socket:.1f} KiB per socket"
    )
    if held.gc_open is not None:
        result.say(
            f"the web process's garbage collector while they opened (tasklight_gc_pause_seconds): "
            f"{held.gc_open.describe()}"
        )
    result.say(
        f"probe user's commit → socket latency, {probe_tasks} tasks at {PROBE_RATE:g}/s while all are open: "
        f"{fmt_ms(probe_summary)} ({held.probe_completed} ended; {held.held_after_probe} sockets still open after)"
    )
    if churn > 0 and held.gc_churn is not None:
        churn_summary = summary_ms(held.churn_probe)
        handshakes = summary_ms(held.churn_handshakes)
        result.figures.update(
            churned=held.churned,
            churn_probe_latency_ms=churn_summary,
            churn_handshake_ms=handshakes,
            gc_while_churning=vars(held.gc_churn),
            rss_after_churn_kib=held.rss_after_churn_kib,
        )
        result.say(
            f"churn, {churn_seconds:g} s: {held.churned} sockets closed and opened again ({churn:g}/s asked; "
            "the probe user's tasks POSTed to a second web process, so that they go on while this one pauses); "
            f"handshakes {fmt_ms(handshakes)}; probe user's latency meanwhile {fmt_ms(churn_summary)} "
            f"({held.churn_probe_completed} ended); garbage collector: {held.gc_churn.describe()}; "
            f"web RSS after it {held.rss_after_churn_kib / 1024:.1f} MiB"
        )
    result.targets += [
        Target("sockets held by one web process", float(held.held), 10_000, at_least=True),
        Target("KiB per socket", per_socket, 40, at_least=False),
        Target(
            "probe user's event p99 (ms) with all sockets open", probe_summary["p99"], 50, at_least=False, strict=True
        ),
    ]
    for target in result.targets:
        result.say(target.describe())
