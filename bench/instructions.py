"""Measurement 7 (opt-in, no target): instructions per request of Tasklight's
ASGI application, counted by valgrind.

CPU time per request moves by a quarter from one minute to the next on a
shared 2-vCPU machine (docs/benchmarks.md), more than most changes to the
request path are worth. Instructions do not: valgrind's callgrind tool counts
the instructions a process executes, the same from run to run for the same
code and inputs, whatever else the machine is doing. Each kind of request is
run N and 3N times in two processes (bench/asgi_requests.py), both under
callgrind, and the difference divided by 2N is the application's
instructions per request: start-up and set-up cancel out. The Django
application is called in-process, without uvicorn (whose HTTP parsing is not
counted); PostgreSQL, Redis and RabbitMQ run outside valgrind, and their
work is not counted either.

    python -m bench.run --only instructions --instructions-requests 100
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import procs
from .asgi_requests import KINDS
from .report import Result

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(env: dict[str, str], kind: str, count: int) -> int:
    """All instructions of one `bench.asgi_requests` process: set-up, warm-up and ``count`` requests."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.asgi_requests", kind, str(count)]
    done = subprocess.run(command, env=env, cwd=procs.ROOT, capture_output=True, text=True, timeout=1800)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{kind} x {count} under valgrind exited {done.returncode}: {done.stderr[-1500:]}")
    return int(found.group(1))


def per_request(env: dict[str, str], kind: str, count: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # both at once: one per core
        few, many = pool.map(lambda n: instructions(env, kind, n), [count, 3 * count])
    return (many - few) / (2 * count)


def measure(config: procs.Config, options: Any, result: Result) -> None:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    procs.delete_queue(config.queue)
    procs.fresh_database(config)
    env = config.stack_env(LOG_LEVEL="ERROR")
    count = options.instructions_requests
    figures: dict[str, float] = {}
    result.say(f"the ASGI application in-process under callgrind, {count} and {3 * count} requests of each kind")
    for kind, (method, path, _, status) in KINDS.items():
        figures[kind] = per_request(env, kind, count)
        result.say(f"  {method} {path} ({status}): {figures[kind] / 1e6:.2f} million instructions per request")
    procs.delete_queue(config.queue)  # no worker: the POSTed tasks are dropped with it
    result.figures.update(instructions_per_request=figures)
