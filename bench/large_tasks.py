"""What a large task costs, end to end (docs/benchmarks.md, "Large tasks").

    .venv/bin/python -m bench.large_tasks [--tasks 20] [--text-bytes 1048576] [--no-browser]

One user queues one ``text_stats`` task with a text of ``--text-bytes`` bytes,
then ``--tasks`` in all, on the real stack (the Procfile's uvicorn, a prefork
Celery worker, PostgreSQL, RabbitMQ, Redis). It prints the bytes each part
carries: the rows written to PostgreSQL, the messages published on Redis
(counted by a subscriber of the run's own prefix), the frames one WebSocket
client receives, the list API's and the home page's answers; the home page's
time to render in Chromium and its longest main-thread task; and what the
CLI does with such a task. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.sync.client import connect

from . import procs

PASSWORD = "a-long-enough-passphrase-9"  # noqa: S105  # a throwaway user on loopback
TERMINAL = ("task.succeeded", "task.failed", "task.cancelled")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "every", "word", "counts"]


def text_of(size: int) -> str:
    """ASCII words and newlines, exactly ``size`` bytes."""
    rng = random.Random(7)  # noqa: S311  # the same filler text each run
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else " ")
        parts.append(word)
        length += len(word)
    return "".join(parts)[:size]


class RedisTap:
    """Counts what is published to the run's groups (channels_redis pub/sub)."""

    def __init__(self, prefix: str) -> None:
        self.client = redis.Redis.from_url(procs.REDIS_URL)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(f"{prefix}__group__*")
        self.counts: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            message = self.pubsub.get_message(timeout=0.2)
            if message is None or message["type"] != "pmessage":
                continue
            data: bytes = message["data"]
            kind = next((k for k in ("live.progress", "live.event", "live.inbox") if k.encode() in data[:200]), "other")
            self.counts[kind] += 1
            self.bytes[kind] += len(data)

    def reset(self) -> None:
        self.counts.clear()
        self.bytes.clear()

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        self.pubsub.close()
        self.client.close()


def published(tap: RedisTap, messages: int) -> None:
    """Waits until the tap has seen as many messages as the socket had frames."""
    procs.wait_for(lambda: sum(tap.counts.values()) >= messages, timeout=10, what=f"{messages} messages on Redis")


def sign_up(base_url: str) -> tuple[str, str]:
    username = f"large-{os.getpid()}"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.post("/api/auth/signup/", json={"username": username, "password": PASSWORD}).status_code == 201
        token = http.post("/api/auth/token/", json={"username": username, "password": PASSWORD}).json()["token"]
    return username, token


def follow(ws: Any, task_ids: set[str]) -> tuple[Counter[str], Counter[str]]:
    """Frames (count, bytes by type) until every task in ``task_ids`` ended."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    pending = set(task_ids)
    while pending:
        raw = ws.recv(timeout=120)
        frame = json.loads(raw)
        counts[frame["type"]] += 1
        sizes[frame["type"]] += len(raw.encode())
        if frame["type"] == "event" and frame["event"] in TERMINAL:
            pending.discard(frame["task"]["id"])
    return counts, sizes


def show(label: str, counts: Counter[str], sizes: Counter[str]) -> None:
    parts = ", ".join(f"{kind} {counts[kind]} = {sizes[kind]:,} B" for kind in sorted(counts))
    print(f"  {label}: {sum(sizes.values()):,} B in {sum(counts.values())} ({parts})", flush=True)


def pg_sizes(config: procs.Config) -> None:
    task = procs.sql(
        config,
        "SELECT count(*), sum(octet_length(params::text)), sum(pg_column_size(params)), sum(pg_column_size(t.*)) "
        "FROM workloads_task t",
    )[0]
    events = procs.sql(
        config,
        "SELECT count(*), sum(octet_length(task::text)), sum(pg_column_size(task)) FROM live_event",
    )[0]
    relations = procs.sql(
        config,
        "SELECT pg_total_relation_size('workloads_task'), pg_total_relation_size('live_event')",
    )[0]
    print(
        f"  PostgreSQL: {task[0]} task rows, params {task[1]:,} B as text, {task[2]:,} B stored (TOAST, compressed); "
        f"{events[0]} events, their task JSON {events[1]:,} B as text, {events[2]:,} B stored; "
        f"tables with TOAST and indexes: tasks {relations[0]:,} B, events {relations[1]:,} B",
        flush=True,
    )


def from_postgresql(pid: int) -> int:
    """Bytes the process's open connections to PostgreSQL have received (the
    kernel's count for each TCP socket, ``ss -i``'s bytes_received)."""
    listing = subprocess.run(
        ["ss", "-Htinp", "state", "established", "( dport = :5432 )"], capture_output=True, text=True, check=True
    ).stdout
    total = 0
    mine = False
    for line in listing.splitlines():
        if not line.startswith(("\t", " ")):
            mine = f"pid={pid}," in line
        elif mine:
            total += sum(int(word.split(":")[1]) for word in line.split() if word.startswith("bytes_received:"))
    return total


def timed_gets(client: httpx.Client, path: str, web_pid: int, label: str, times: int = 5) -> None:
    """GETs ``path`` ``times`` times; prints its size, the first and the median
    time, and what the web process received from PostgreSQL for one (the median)."""
    elapsed: list[float] = []
    read: list[int] = []
    size = 0
    for _ in range(times):
        before = from_postgresql(web_pid)
        started = time.monotonic()
        answer = client.get(path)
        elapsed.append((time.monotonic() - started) * 1000)
        read.append(from_postgresql(web_pid) - before)
        assert answer.status_code == 200, answer.status_code
        size = len(answer.content)
    print(
        f"  {label}: {size:,} B in {elapsed[0]:.0f} ms, median of {times} {statistics.median(elapsed):.0f} ms; "
        f"the web process received {statistics.median(read):,.0f} B from PostgreSQL for it",
        flush=True,
    )


def cli(base_url: str, token: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TASKLIGHT_URL": base_url, "TASKLIGHT_TOKEN": token, "XDG_CONFIG_HOME": tempfile.mkdtemp()}
    env["PYTHONPATH"] = str(procs.ROOT)
    return subprocess.run(
        [sys.executable, "-m", "tasklight_cli", *args], cwd=procs.ROOT, env=env, capture_output=True, timeout=timeout
    )


def browser(base_url: str, username: str, tasks: int, http: httpx.Client, body: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=args, headless=True)
        page = browser.new_page()
        login = page.request.post(f"{base_url}/api/auth/login/", data={"username": username, "password": PASSWORD})
        assert login.ok, login.text()
        page.add_init_script(
            "window.__long = [];"
            "new PerformanceObserver(l => l.getEntries().forEach(e => window.__long.push(e.duration)))"
            ".observe({type: 'longtask', buffered: true});"
        )
        started = time.monotonic()
        page.goto(f"{base_url}/", wait_until="load")
        loaded = time.monotonic() - started
        page.wait_for_function(f"document.querySelectorAll('[data-testid=task-row]').length >= {tasks}", timeout=60000)
        page.wait_for_selector("[data-testid=connection-status][data-state=connected]", state="attached", timeout=60000)
        ready = time.monotonic() - started
        timing = page.evaluate(
            "(() => { const n = performance.getEntriesByType('navigation')[0];"
            " return {response: n.responseEnd, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
            " bytes: n.transferSize, body: n.decodedBodySize,"
            " heap: performance.memory ? performance.memory.usedJSHeapSize : null}; })()"
        )
        # Responsiveness after load: how long the main thread takes to run a task posted now.
        echo = []
        for _ in range(5):
            before = time.monotonic()
            page.evaluate("new Promise(r => setTimeout(r, 0))")
            echo.append((time.monotonic() - before) * 1000)
        longest = page.evaluate("window.__long.length ? Math.max(...window.__long) : 0")
        total_long = page.evaluate("window.__long.reduce((a, b) => a + b, 0)")
        print(
            f"  Chromium: HTML {timing['body']:,} B; response end {timing['response']:.0f} ms, "
            f"DOMContentLoaded {timing['dom']:.0f} ms, load {timing['load']:.0f} ms (harness {loaded * 1000:.0f} ms), "
            f"{tasks} rows and socket open {ready * 1000:.0f} ms; long tasks: longest {longest:.0f} ms, "
            f"total {total_long:.0f} ms; JS heap {timing['heap'] or 0:,} B; "
            f"a posted task runs in {min(echo):.0f}-{max(echo):.0f} ms after load",
            flush=True,
        )
        # One more, live: its frames (over 1 MiB each) reach the page.
        started = time.monotonic()
        task_id = http.post("/api/tasks/", content=body).json()["id"]
        page.wait_for_selector(f"[data-task-id='{task_id}'][data-status=succeeded]", state="attached", timeout=60000)
        print(
            f"  Chromium: a new task's row shows it succeeded {(time.monotonic() - started) * 1000:.0f} ms"
            " after its POST"
        )
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="tasklight-large")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--text-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="tasklight-large-"))
    config = procs.Config(args.name, log_dir)
    print(f"Large tasks: text_stats with {args.text_bytes:,} B of text; logs in {log_dir}", flush=True)
    tap: RedisTap | None = None
    exits = contextlib.ExitStack()
    try:
        procs.prepare_template(config)
        procs.fresh_database(config)
        env = config.stack_env()
        web, base_url = procs.start_web(env, log_dir)
        username, token = sign_up(base_url)
        text = text_of(args.text_bytes)
        body = json.dumps({"kind": "text_stats", "params": {"text": text}})
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        http = httpx.Client(base_url=base_url, timeout=60, headers=headers)
        tap = RedisTap(config.prefix)

        # The CLI following a task queued before any worker runs: it sees every frame.
        queued = http.post("/api/tasks/", content=body)
        print(f"  POST /api/tasks/: body {len(body):,} B -> {queued.status_code}, answer {len(queued.content):,} B")
        first_id = queued.json()["id"]
        waiting = subprocess.Popen(
            [sys.executable, "-m", "tasklight_cli", "wait", first_id],
            cwd=procs.ROOT,
            env={**os.environ, "TASKLIGHT_URL": base_url, "TASKLIGHT_TOKEN": token, "PYTHONPATH": str(procs.ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        ws = exits.enter_context(
            connect(
                base_url.replace("http", "ws", 1) + "/ws/",
                additional_headers={"Authorization": f"Token {token}"},
                max_size=None,
                max_queue=None,
            )
        )
        hello = str(ws.recv(timeout=10))
        # Its first line (the task, queued) comes once its socket is open and it has read the task.
        assert waiting.stderr is not None
        first_line = waiting.stderr.readline().decode()
        procs.start_celery_worker(env, log_dir, app="tasklight", queue=config.queue)
        counts, sizes = follow(ws, {first_id})
        ended = time.monotonic()
        counts["hello"], sizes["hello"] = 1, len(hello.encode())
        show("one task, WebSocket frames to one client (after queued)", counts, sizes)
        published(tap, sum(counts.values()) - 1)
        show("one task, Redis PUBLISH (after queued)", tap.counts, tap.bytes)
        pg_sizes(config)
        out, err = waiting.communicate(timeout=180)
        print(
            f"  CLI `tasklight wait` on it: exit {waiting.returncode} {(time.monotonic() - ended) * 1000:.0f} ms "
            f"after the harness's socket had the end (at most), stdout {len(out):,} B, "
            f"stderr: {(first_line + err.decode())[-600:]!r}"
        )

        tap.reset()
        ids = []
        for _ in range(args.tasks - 1):
            answer = http.post("/api/tasks/", content=body)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        counts, sizes = follow(ws, set(ids))
        show(f"{args.tasks - 1} more tasks, WebSocket frames", counts, sizes)
        published(tap, sum(counts.values()))
        show(f"{args.tasks - 1} more tasks, Redis PUBLISH", tap.counts, tap.bytes)
        exits.close()
        pg_sizes(config)

        timed_gets(http, "/api/tasks/", web.pid, "GET /api/tasks/")
        with httpx.Client(base_url=base_url, timeout=60) as session:
            session.post("/api/auth/login/", json={"username": username, "password": PASSWORD})
            timed_gets(session, "/", web.pid, "GET / (signed in)")
        listed = cli(base_url, token, "list")
        print(f"  CLI `tasklight list`: exit {listed.returncode}, {len(listed.stdout):,} B")
        listed = cli(base_url, token, "list", "--json")
        print(f"  CLI `tasklight list --json`: exit {listed.returncode}, {len(listed.stdout):,} B")
        try:
            submitted = cli(base_url, token, "submit", "text_stats", "--param", f"text={text}")
            print(f"  CLI `tasklight submit --param text=<the text>`: exit {submitted.returncode}")
        except OSError as exc:
            print(f"  CLI `tasklight submit --param text=<the text>`: not started: {exc}")
        if not args.no_browser:
            browser(base_url, username, args.tasks, http, body)
    finally:
        exits.close()
        if tap is not None:
            tap.stop()
        procs.cleanup(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
