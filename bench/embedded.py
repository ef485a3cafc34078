"""Measurement 5: `make run`'s configuration (no server at all) end to end:
notification latency at a steady rate."""

from __future__ import annotations

import os
from typing import Any

from . import procs
from .clients import run_async, sign_up_many
from .latency import Steady, steady_tasks
from .report import Result, Target
from .stats import fmt_ms, summary_ms


def embedded_env(config: procs.Config) -> dict[str, str]:
    """`make run`'s environment: none of DATABASE_URL, CELERY_BROKER_URL or
    CHANNEL_LAYER_URL, a data folder of its own; only the benchmark's workload
    module and its limits (so that one client may queue this fast) added."""
    env = {key: value for key, value in os.environ.items() if key not in procs.CONFIGURATION}
    env.update(
        TASKLIGHT_DATA_DIR=str(config.log_dir / "embedded-data"),
        WORKLOAD_MODULES="bench.workloads",
        TASK_RATE_LIMIT="1000000/min",
        MAX_RUNNING_TASKS_PER_USER="1000",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(procs.ROOT),
    )
    env.update(config.extra_env)
    return env


def measure(config: procs.Config, options: Any, result: Result) -> None:
    rate, duration = options.embedded_rate, options.embedded_duration
    env = embedded_env(config)
    # The Procfile's release, web and worker lines (HOST=127.0.0.1, as `make run` sets it).
    procs.run_command(procs.procfile_command("release"), env, config.log_dir, "embedded-migrate")
    web, base_url = procs.start_web(env, config.log_dir, name="embedded-web")
    worker = procs.start("embedded-worker", procs.procfile_command("worker"), env, config.log_dir)

    def ready() -> bool:
        worker.check_alive()
        return " ready." in worker.log()

    procs.wait_for(ready, timeout=90, what="the embedded worker to be ready")

    async def client() -> Steady:
        users = await sign_up_many(base_url, 2, concurrency=1)
        return await steady_tasks(base_url, base_url, users, rate, duration)

    steady = run_async(client())
    procs.retire(worker, web)
    summary = summary_ms(steady.latencies)
    result.figures.update(
        latency_ms=summary,
        post_latency_ms=summary_ms(steady.post_latencies),
        completed=steady.completed,
        scheduled=steady.scheduled,
    )
    result.say(
        f"embedded (SQLite, kombu SQL transport, channels-lite; uvicorn + worker -c 2 as in the Procfile), commit → "
        f"socket at {rate:g} tasks/s for {duration:g} s: {fmt_ms(summary)}"
        + ("" if steady.completed == steady.scheduled else f" ({steady.completed} of {steady.scheduled} ended)")
    )
    result.say(
        f"  POSTs sent at {steady.achieved_rate:.1f}/s; "
        f"scheduled send → answer {fmt_ms(summary_ms(steady.post_latencies))}"
        + (f"; {len(steady.errors)} errors, first: {steady.errors[0]}" if steady.errors else "")
    )
    target = Target("embedded notification p99 (ms)", summary["p99"], 100, at_least=False)
    result.targets.append(target)
    result.say(target.describe())
