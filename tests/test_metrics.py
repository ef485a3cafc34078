"""Prometheus metrics (issue 7, check 2): a task's counters move as it runs,
on the web process's token-protected /metrics and on the worker's own port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from workloads.models import Task, TaskStatus

from .stack import (
    CHILD_ENDED,
    HTTP_TIMEOUT,
    Account,
    free_port,
    pool_processes,
    run_python,
    terminal_for,
    wait_for,
)

TOKEN = "metrics-test-token-0123456789"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus' text format, or None if absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


# --- The endpoint alone (Django's test client) ----------------------------------


def scrape(base_url: str) -> str:
    """A real web process's /metrics (started with METRICS_TOKEN=TOKEN)."""
    response = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_metrics_does_not_exist_without_a_token(settings: Any, db: None) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


def test_metrics_refuses_a_missing_or_wrong_token(settings: Any, db: None) -> None:
    settings.METRICS_TOKEN = TOKEN
    client = Client()
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Token {TOKEN}").status_code == 401
    assert b"tasklight_" not in client.get("/metrics", HTTP_AUTHORIZATION="Bearer x").content


def test_metrics_counts_queued_and_running_tasks_by_kind(settings: Any, alice: User) -> None:
    settings.METRICS_TOKEN = TOKEN
    Task.objects.create(owner=alice, kind="simulate", params={})
    Task.objects.create(owner=alice, kind="simulate", params={})
    Task.objects.create(owner=alice, kind="primes", params={}, status=TaskStatus.RUNNING)
    Task.objects.create(owner=alice, kind="primes", params={}, status=TaskStatus.SUCCEEDED)

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    text = response.content.decode()
    assert sample(text, "tasklight_tasks", state="queued", kind="simulate") == 2
    assert sample(text, "tasklight_tasks", state="running", kind="primes") == 1
    # Known kinds with nothing in a state show 0, not a missing series.
    assert sample(text, "tasklight_tasks", state="running", kind="simulate") == 0
    # Finished tasks are counters (tasklight_tasks_finished_total), not this gauge.
    assert sample(text, "tasklight_tasks", state="succeeded", kind="primes") is None


def test_gc_pauses_are_counted_by_generation_into_their_buckets() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tasklight import metrics

    # Two collections of known length: a full one of 0.3 s, a young one of 2 ms.
    # The clock is this collector's own: the process's real collections, heard
    # by its own hook, must not read it (patching time.perf_counter let them).
    clock = iter([10.0, 10.3, 20.0, 20.002])
    pauses = metrics.GcPauses(clock=lambda: next(clock))
    registry = CollectorRegistry()
    registry.register(pauses)
    pauses._on_gc("start", {"generation": 2})
    pauses._on_gc("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses._on_gc("start", {"generation": 0})
    pauses._on_gc("stop", {"generation": 0, "collected": 0, "uncollectable": 0})

    text = generate_latest(registry).decode()
    full = {"generation": "2"}
    assert sample(text, "tasklight_gc_pause_seconds_bucket", le="0.25", **full) == 0
    assert sample(text, "tasklight_gc_pause_seconds_bucket", le="0.5", **full) == 1
    assert sample(text, "tasklight_gc_pause_seconds_bucket", le="+Inf", **full) == 1
    assert sample(text, "tasklight_gc_pause_seconds_count", **full) == 1
    assert sample(text, "tasklight_gc_pause_seconds_sum", **full) == pytest.approx(0.3)
    assert sample(text, "tasklight_gc_pause_seconds_bucket", le="0.001", generation="0") == 0
    assert sample(text, "tasklight_gc_pause_seconds_bucket", le="0.005", generation="0") == 1
    assert sample(text, "tasklight_gc_pause_seconds_count", generation="1") == 0
    assert sample(text, "tasklight_gc_longest_pause_seconds") == pytest.approx(0.3)


def test_gc_pauses_hear_a_real_collection() -> None:
    import gc

    from tasklight import metrics

    pauses = metrics.GcPauses()
    pauses.watch()
    pauses.watch()  # once only
    try:
        assert gc.callbacks.count(pauses._on_gc) == 1
        gc.collect()
    finally:
        gc.callbacks.remove(pauses._on_gc)
    assert sum(pauses.buckets[2]) == 1
    assert pauses.sums[2] > 0
    assert pauses.longest >= pauses.sums[2]


def test_a_pool_process_forked_while_a_thread_writes_a_metric_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's main process forks pool processes while its threads write
    # metrics (the pool deaths' thread counts the task it fails). Before,
    # prometheus_client's one lock could be held at the fork: the new
    # process hung at its first metric, for good (most forks here did).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    seen = run_python(
        CHILD_ENDED + "import json, sys, threading\n"
        "sys.argv = ['celery', '-A', 'tasklight', 'worker']\n"
        "import django; django.setup()\n"
        "from tasklight.celery import app\n"
        "from tasklight import metrics\n"
        "from prometheus_client import values\n"
        "stop = threading.Event()\n"
        "def write():\n"
        "    while not stop.is_set():\n"
        "        metrics.tasks_finished.labels('reverse', 'failed').inc()\n"
        "threading.Thread(target=write, daemon=True).start()\n"
        "forks = hung = 0\n"
        "while forks < 200 and hung < 3:\n"
        "    forks += 1\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        metrics.tasks_started.labels('reverse').inc()\n"
        "        os._exit(0)\n"
        "    hung += child_ended(pid, 3) is None\n"
        "stop.set()\n"
        "print(json.dumps({'forks': forks, 'hung': hung, 'multiprocess': values.ValueClass._multiprocess}))"
    )
    assert seen["multiprocess"] is True  # the worker's mode, as in a real worker
    assert seen == {"forks": 200, "hung": 0, "multiprocess": True}


# --- A real web process and worker ----------------------------------------------


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_tasks_counters_move_as_it_runs(private_stack: Any) -> None:
    running = private_stack(METRICS_TOKEN=TOKEN)
    worker_port = free_port()
    running.start_worker(concurrency=1, WORKER_METRICS_PORT=str(worker_port))
    web_metrics = f"{running.base_url}/metrics"
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"

    def scrape_web() -> str:
        return scrape(running.base_url)

    def scrape_worker() -> str:
        return wait_for(lambda: httpx.get(worker_metrics, timeout=5).text, timeout=10, what="the worker's metrics")

    # Not public: no token, or the wrong one, and nothing is shown.
    assert httpx.get(web_metrics, timeout=HTTP_TIMEOUT).status_code == 401
    assert httpx.get(web_metrics, headers={"Authorization": "Bearer wrong"}, timeout=HTTP_TIMEOUT).status_code == 403

    before = scrape_web()
    assert sample(before, "tasklight_open_sockets") == 0
    assert sample(before, "tasklight_tasks_created_total", kind="simulate") is None
    assert sample(scrape_worker(), "tasklight_tasks_finished_total", kind="simulate", outcome="succeeded") is None

    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        assert sample(scrape_web(), "tasklight_open_sockets") == 1
        task = alice.queue("simulate", seconds=1.5)

        # While it runs, the gauge read from the database shows it.
        wait_for(
            lambda: (sample(scrape_web(), "tasklight_tasks", state="running", kind="simulate") or 0) >= 1,
            timeout=30,
            what="the running task in tasklight_tasks",
        )
        socket.events_until(terminal_for(task["id"]))

    web = scrape_web()
    assert sample(web, "tasklight_tasks_created_total", kind="simulate") == 1
    # Queued, started and succeeded were sent live (one may have come by a
    # replay instead, had the worker's event overtaken the web's).
    assert 1 <= (sample(web, "tasklight_notification_lag_seconds_count") or 0) <= 3
    assert sample(web, "tasklight_socket_resumes_total") == 0
    # The web process counts its garbage collector's pauses (young ones at least).
    assert (sample(web, "tasklight_gc_pause_seconds_count", generation="0") or 0) >= 1
    assert (sample(web, "tasklight_gc_longest_pause_seconds") or 0) > 0

    # A second socket resumes from the start: the three events are replayed.
    with alice.socket() as socket:
        socket.ws.send(json.dumps({"type": "resume", "after": 0}))
        socket.events_until(terminal_for(task["id"]))
        web = scrape_web()
    assert sample(web, "tasklight_socket_resumes_total") == 1
    assert sample(web, "tasklight_socket_replays_total", reason="resume") == 1
    assert (sample(web, "tasklight_replayed_events_total") or 0) >= 3
    wait_for(
        lambda: sample(scrape_web(), "tasklight_open_sockets") == 0, timeout=10, what="the socket to be counted out"
    )

    def worker_counted() -> str:
        text = scrape_worker()
        done = sample(text, "tasklight_tasks_finished_total", kind="simulate", outcome="succeeded")
        return text if done == 1 else ""

    # The pool process records after its commit; the socket may hear of it first.
    worker = wait_for(worker_counted, timeout=10, what="the worker to count the finished task")
    assert sample(worker, "tasklight_tasks_started_total", kind="simulate") == 1
    assert sample(worker, "tasklight_task_queue_wait_seconds_count", kind="simulate") == 1
    assert sample(worker, "tasklight_task_run_seconds_count", kind="simulate", outcome="succeeded") == 1
    run_seconds = sample(worker, "tasklight_task_run_seconds_sum", kind="simulate", outcome="succeeded")
    assert run_seconds is not None and 1.5 <= run_seconds < 30
    # 1.5 s or more lands in no bucket below 2.5 s.
    assert sample(worker, "tasklight_task_run_seconds_bucket", kind="simulate", outcome="succeeded", le="1.0") == 0


def test_a_worker_removes_the_metrics_directories_of_killed_workers(private_stack: Any) -> None:
    """A worker removes its own metrics directory as it stops; one killed
    leaves it behind, and the next worker to start removes it."""
    temp = Path(tempfile.gettempdir())
    ended = subprocess.Popen(["true"])
    ended.wait()
    killed = temp / f"tasklight-worker-metrics-{ended.pid}-left"
    running_elsewhere = temp / f"tasklight-worker-metrics-{os.getpid()}-kept"
    killed.mkdir()
    running_elsewhere.mkdir()
    try:
        worker = private_stack().start_worker(concurrency=1)
        assert not killed.exists()
        assert running_elsewhere.exists()
        (own,) = temp.glob(f"tasklight-worker-metrics-{worker.popen.pid}-*")
        worker.stop()
        assert not own.exists()
    finally:
        shutil.rmtree(killed, ignore_errors=True)
        shutil.rmtree(running_elsewhere, ignore_errors=True)


def test_workers_and_web_given_one_metrics_directory_keep_their_counts_apart(
    private_stack: Any, tmp_path: Path
) -> None:
    """One PROMETHEUS_MULTIPROC_DIR for every process (one .env for all): a
    second worker emptied the first one's files as it started, and the web
    process wrote its counts there too, so a worker's /metrics showed the
    web's tasks_created_total (counted twice once summed)."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    running = private_stack(METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(shared))
    first_port, second_port = free_port(), free_port()
    running.start_worker(concurrency=1, WORKER_METRICS_PORT=str(first_port), PROMETHEUS_MULTIPROC_DIR=str(shared))

    def scrape_worker(port: int) -> str:
        return wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, timeout=10, what="worker metrics"
        )

    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=0)
        socket.events_until(terminal_for(task["id"]))
    finished = {"kind": "simulate", "outcome": "succeeded"}
    wait_for(
        lambda: sample(scrape_worker(first_port), "tasklight_tasks_finished_total", **finished) == 1,
        timeout=10,
        what="the first worker to count its task",
    )
    assert sample(scrape(running.base_url), "tasklight_tasks_created_total", kind="simulate") == 1
    assert sample(scrape_worker(first_port), "tasklight_tasks_created_total", kind="simulate") is None

    running.start_worker(concurrency=1, WORKER_METRICS_PORT=str(second_port), PROMETHEUS_MULTIPROC_DIR=str(shared))
    assert sample(scrape_worker(first_port), "tasklight_tasks_finished_total", **finished) == 1
    assert sample(scrape_worker(second_port), "tasklight_tasks_finished_total", **finished) is None
    assert len(list(shared.glob("tasklight-worker-metrics-*"))) == 2


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_dead_pool_processs_live_gauges_leave_the_sums_and_its_counts_stay(
    private_stack: Any, tmp_path: Path
) -> None:
    """Each pool process writes its own files, named after its pid. A live
    gauge's (multiprocess_mode livesum...) file of a pool process that died
    stayed in the worker's sums until the worker stopped: prometheus_client
    leaves it for the parent to mark the process dead."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    port = free_port()
    running = private_stack()
    worker = running.start_worker(concurrency=1, WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(shared))
    (own,) = shared.glob(f"tasklight-worker-metrics-{worker.popen.pid}-*")
    alice = Account.sign_up(running.base_url)
    with alice.socket() as socket:
        task = alice.queue("simulate", seconds=0)
        socket.events_until(terminal_for(task["id"]))
    finished = {"kind": "simulate", "outcome": "succeeded"}

    def scrape_worker() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    wait_for(
        lambda: sample(scrape_worker(), "tasklight_tasks_finished_total", **finished) == 1,
        timeout=10,
        what="the worker to count the task",
    )
    [first] = pool_processes(worker)
    assert (own / f"gauge_livesum_{first}.db").exists()  # tasklight_open_sockets, 0 in a worker
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: pool_processes(worker) not in ([], [first]),
        timeout=20,
        what="the pool to replace its process",
    )
    wait_for(lambda: not (own / f"gauge_livesum_{first}.db").exists(), timeout=5, what="its live gauge gone")
    assert (own / f"counter_{first}.db").exists() and (own / f"histogram_{first}.db").exists()
    assert sample(scrape_worker(), "tasklight_tasks_finished_total", **finished) == 1
    assert (own / f"gauge_livesum_{worker.popen.pid}.db").exists()  # the main process's: alive
