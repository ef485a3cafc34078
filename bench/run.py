"""`make bench`: Tasklight measured against the bare stack, in the same run.

    python -m bench.run                       # everything, full size (~10 min on 2 cores)
    python -m bench.run --quick               # tiny numbers: a smoke run of about a minute
    python -m bench.run --only throughput --tasks 2000

Each measurement prints its figures and the exact command line that
reproduces it alone. docs/benchmarks.md says what each one is.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from . import api, cost, embedded, instructions, latency, procs, sockets, throughput
from .report import MedianTarget, Result, Target

Measure = Callable[[procs.Config, argparse.Namespace, Result], None]

# name: (function, the size options and flags that reproduce it)
MEASUREMENTS: dict[str, tuple[Measure, tuple[str, ...]]] = {
    "throughput": (throughput.measure, ("tasks", "users", "drain_tasks", "worker_concurrency", "bare_like_tasklight")),
    "latency": (latency.measure, ("rate", "duration", "latency_users", "commit_timestamps")),
    "sockets": (
        sockets.measure,
        ("sockets", "socket_users", "probe_tasks", "socket_churn", "churn_seconds", "sockets_no_deflate"),
    ),
    "api": (
        api.measure,
        (
            "api_rate",
            "api_duration",
            "api_users",
            "api_web_processes",
            "api_warm_up",
            "list_rows",
            "list_user_rows",
            "list_rate",
            "list_duration",
        ),
    ),
    "embedded": (embedded.measure, ("embedded_rate", "embedded_duration")),
    "cost": (cost.measure, ("cost_requests",)),
    "instructions": (instructions.measure, ("instructions_requests",)),
}
# Run only when asked for with --only: a few minutes under valgrind, for
# judging a change to the request path, not a figure of the issue's.
OPT_IN = {"instructions"}

FULL: dict[str, Any] = {
    "tasks": 2000,
    "users": 20,
    "drain_tasks": 5000,
    "worker_concurrency": 2,
    "rate": 100.0,
    "duration": 20.0,
    "latency_users": 10,
    "sockets": 10_000,
    "socket_users": 600,
    "probe_tasks": 50,
    "socket_churn": 0.0,
    "churn_seconds": 240.0,
    "api_rate": 200.0,
    "api_duration": 15.0,
    "api_users": 10,
    "api_web_processes": 2,
    "api_warm_up": 3.0,
    "list_rows": 1_000_000,
    "list_user_rows": 100_000,
    "list_rate": 50.0,
    "list_duration": 10.0,
    "embedded_rate": 10.0,
    "embedded_duration": 20.0,
    "cost_requests": 1000,
    "instructions_requests": 100,
}
QUICK: dict[str, Any] = {
    "tasks": 200,
    "users": 4,
    "drain_tasks": 1000,
    "worker_concurrency": 2,
    "rate": 50.0,
    "duration": 3.0,
    "latency_users": 2,
    "sockets": 200,
    "socket_users": 20,
    "probe_tasks": 10,
    "socket_churn": 0.0,
    "churn_seconds": 5.0,
    "api_rate": 50.0,
    "api_duration": 3.0,
    "api_users": 2,
    "api_web_processes": 2,
    "api_warm_up": 1.0,
    "list_rows": 20_000,
    "list_user_rows": 2_000,
    "list_rate": 20.0,
    "list_duration": 3.0,
    "embedded_rate": 5.0,
    "embedded_duration": 3.0,
    "cost_requests": 100,
    "instructions_requests": 5,
}
HELP = {
    "tasks": "throughput: Tasklight tasks, POSTed by all users at once",
    "users": "throughput: users, each with its own socket",
    "drain_tasks": "throughput: messages for the bare Celery drain",
    "worker_concurrency": "throughput: Tasklight's worker pool processes (the bare drain keeps 2)",
    "rate": "latency: tasks/s (and raw-path messages/s)",
    "duration": "latency: seconds at that rate",
    "latency_users": "latency: users the tasks are spread over",
    "sockets": "sockets: idle sockets to open (one web process)",
    "socket_users": "sockets: users the sockets belong to (tokens reused)",
    "probe_tasks": "sockets: tasks of the probe user while all are open",
    "socket_churn": "sockets: then close and reopen this many of them per second (0: no churn phase)",
    "churn_seconds": "sockets: seconds of churn, the probe user's tasks going on at the same rate",
    "api_rate": "api: POST /api/tasks/ per second (open loop)",
    "api_duration": "api: seconds of POSTs",
    "api_users": "api: users the POSTs are spread over",
    "api_web_processes": "api: POSTs again on this many web processes sharing the port (WEB_CONCURRENCY)",
    "api_warm_up": "api: seconds of POSTs at the same rate before those measured, printed apart",
    "list_rows": "api: rows in the task table for the list",
    "list_user_rows": "api: rows of the listing user",
    "list_rate": "api: GET /api/tasks/ per second (open loop)",
    "list_duration": "api: seconds of GETs",
    "embedded_rate": "embedded: tasks/s",
    "embedded_duration": "embedded: seconds at that rate",
    "cost_requests": "cost: requests of each kind, one at a time, for the web process's CPU per request",
    "instructions_requests": (
        "instructions (only with --only): N and 3N requests of each kind under valgrind, for instructions per request"
    ),
}
# How many times each measurement runs by default (--runs sets one count for
# all): the two whose targets are ratios to the bare stack move most from
# run to run on a shared machine, and the issue judges them by the median.
RUNS = {"throughput": 3, "latency": 3}

FLAGS = {
    "bare_like_tasklight": "throughput: also drain bare Celery with Tasklight's Celery settings",
    "sockets_no_deflate": "sockets: clients do not offer permessage-deflate (browsers do)",
    "api_worker": "api: run a worker during the POSTs (default: none; the queue is deleted after)",
    "commit_timestamps": (
        "latency: measure from PostgreSQL's own commit timestamps; if track_commit_timestamp is off, "
        "turn it on for the measurement and off after (restarts the local cluster with pg_ctlcluster, twice)"
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=list(MEASUREMENTS), help="run only this measurement (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke run of about a minute")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="run each measurement this many times and judge its targets by the median "
        f"(default {', '.join(f'{name} {count}' for name, count in RUNS.items())}, the others 1; --quick 1)",
    )
    for name, default in FULL.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(default),
            default=None,
            help=f"{HELP[name]} (default {default:g}; --quick {QUICK[name]:g})",
        )
    for name, text in FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=text)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for Tasklight's processes (repeatable), e.g. CONN_MAX_AGE=60",
    )
    parser.add_argument(
        "--name",
        default="tasklight-bench",
        help="names this run's database, queue and Redis prefix (default tasklight-bench)",
    )
    parser.add_argument("--log-dir", type=Path, help="where process logs go (default: a new temp folder)")
    parser.add_argument("--keep-db", action="store_true", help="leave the benchmark databases in place")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    for name in FULL:
        if getattr(args, name) is None:
            setattr(args, name, (QUICK if args.quick else FULL)[name])
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env wants KEY=VALUE, not {item!r}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs wants 1 or more")
    return args


def runs_of(name: str, args: argparse.Namespace) -> int:
    if args.runs is not None:
        return int(args.runs)
    return 1 if args.quick else RUNS.get(name, 1)


def reproduce(name: str, args: argparse.Namespace) -> str:
    """The command line that runs this one measurement again with these sizes."""
    words = ["python", "-m", "bench.run", "--only", name]
    for option in MEASUREMENTS[name][1]:
        value = getattr(args, option)
        flag = f"--{option.replace('_', '-')}"
        if option in FLAGS:
            if value:
                words.append(flag)
        elif isinstance(value, float):
            words += [flag, f"{value:g}" if not value.is_integer() else str(int(value))]
        else:
            words += [flag, str(value)]
    for item in args.env:
        words += ["--env", item]
    if args.runs is not None:
        words += ["--runs", str(args.runs)]
    if args.name != "tasklight-bench":
        words += ["--name", args.name]
    return shlex.join(words)


def _version(command: list[str], timeout: float = 20) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    info: dict[str, str] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    info["nproc"] = _version(["nproc"])
    cpuinfo = Path("/proc/cpuinfo").read_text()
    info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?")
    meminfo = Path("/proc/meminfo").read_text().split()
    info["memory"] = f"{int(meminfo[meminfo.index('MemTotal:') + 1]) / 1024 / 1024:.1f} GiB"
    info["load average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    info["kernel"] = platform.release()
    head = _version(["git", "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(
        ["git", "-C", str(procs.ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout.split("\n")
    dirty = [line[3:] for line in changed if line.strip()]
    info["code"] = f"commit {head}" + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")
    info["python"] = platform.python_version()
    try:
        rows = procs.sql_admin("SHOW server_version")
        info["postgresql"] = str(rows[0][0])
    except Exception as exc:
        info["postgresql"] = f"unknown ({exc})"
    try:
        import redis

        client = redis.Redis.from_url(procs.REDIS_URL, socket_timeout=5)
        info["redis"] = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        info["redis"] = f"unknown ({exc})"
    try:
        from kombu import Connection

        with Connection(procs.BROKER_URL, connect_timeout=5) as conn:
            conn.connect()
            properties = conn.connection.server_properties  # type: ignore[attr-defined]
            info["rabbitmq"] = str(properties.get("version", "?"))
    except Exception as exc:
        info["rabbitmq"] = f"unknown ({exc})"
    from importlib.metadata import version

    packages = ("Django", "channels", "channels-redis", "celery", "kombu", "uvicorn", "psycopg", "redis")
    info["packages"] = ", ".join(f"{name} {version(name)}" for name in packages)
    return info


def medians(results: list[Result]) -> list[MedianTarget]:
    """Each target of a measurement that ran more than once, judged by the
    median of its runs (a failed run has no value and is left out)."""
    by_target: dict[tuple[str, str], list[Target]] = {}
    for result in results:
        for target in result.targets:
            by_target.setdefault((result.name, target.label), []).append(target)
    runs = Counter(result.name for result in results)
    return [MedianTarget(name, targets) for (name, _), targets in by_target.items() if runs[name] > 1]


def summary(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.name}: FAILED ({result.error.splitlines()[0]})")
        lines.extend(f"{result.name}: {target.describe()}" for target in result.targets)
    lines.extend(f"{median.name}: {median.describe()}" for median in medians(results))
    return lines


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tasklight-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    config = procs.Config(args.name, log_dir, dict(item.split("=", 1) for item in args.env))
    names = [name for name in MEASUREMENTS if (name in args.only if args.only else name not in OPT_IN)]
    # Sockets need file descriptors: the harness holds one per socket.
    nofile = procs.raise_nofile(max(4096, args.sockets + 2048) if "sockets" in names else 4096)

    info = machine()
    print("Tasklight benchmark" + (" (--quick: tiny numbers, not for comparison)" if args.quick else ""))
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(f"  open-file limit of the harness: {nofile}; process logs: {log_dir}", flush=True)

    results: list[Result] = []
    status = 0
    try:
        started = time.monotonic()
        procs.prepare_template(config)
        print(f"  (database template migrated in {time.monotonic() - started:.1f} s)", flush=True)
        plan = [(name, run, runs) for name in names for runs in [runs_of(name, args)] for run in range(runs)]
        for name, run, runs in plan:
            measure, _ = MEASUREMENTS[name]
            result = Result(name, reproduce(name, args))
            results.append(result)
            print(f"\n== {name}" + (f" (run {run + 1} of {runs})" if runs > 1 else "") + " ==", flush=True)
            # Each run logs (and keeps embedded mode's data) in a folder of
            # its own: a run reads its processes' logs, which are appended to.
            run_config = config
            if runs > 1:
                run_config = dataclasses.replace(config, log_dir=log_dir / f"{name}-{run + 1}")
                run_config.log_dir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            try:
                measure(run_config, args, result)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                status = 1
                print(f"  FAILED: {result.error}", flush=True)
                traceback.print_exc()
            finally:
                procs.stop_all()
            print(f"  ({time.monotonic() - started:.0f} s)")
            print(f"  reproduce: {result.command}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", flush=True)
        status = 130
    finally:
        procs.cleanup(config, keep_database=args.keep_db)

    print("\n== summary ==")
    for line in summary(results):
        print(f"  {line}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "results": [r.as_json() for r in results],
                    "medians": [t.as_json() for t in medians(results)],
                },
                indent=2,
                default=str,
            )
        )
        print(f"  figures written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
