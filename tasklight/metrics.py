"""Prometheus metrics (docs/observability.md lists them).

Each process counts what it does itself: the web process the tasks it creates
(and the queued ones its users cancel), its sockets and what it sends on them;
a worker the tasks it starts and finishes. The web process serves its own at
``GET /metrics`` (bearer token METRICS_TOKEN), with the tasks queued and
running now read from the database at scrape time. A worker's pool processes
write theirs to files in PROMETHEUS_MULTIPROC_DIR (tasklight/celery.py sets it
up before this module is imported) and its main process serves their sum on
WORKER_METRICS_PORT.

Updating a metric costs a lock and an addition (a write to a memory-mapped
file in a worker): no database query, no I/O on the hot paths.
"""

from __future__ import annotations

import bisect
import gc
import hmac
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

logger = logging.getLogger(__name__)

# Seconds, from a few milliseconds (an idle queue, a quick workload) to an hour.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# A notification is late past a second; the fine buckets sit below it.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

tasks_created = Counter("tasklight_tasks_created", "Tasks created and queued.", ["kind"])
tasks_started = Counter("tasklight_tasks_started", "Tasks a worker started running.", ["kind"])
tasks_finished = Counter(
    "tasklight_tasks_finished",
    "Tasks that reached a terminal state, by outcome (succeeded, failed, cancelled).",
    ["kind", "outcome"],
)
tasks_handed_back = Counter(
    "tasklight_tasks_handed_back",
    "Tasks a worker could not run and sent back to the queue for another worker, by why: "
    "workload_missing (not installed on that worker) or params_refused (that worker's version of it "
    "refuses the parameters).",
    ["kind", "reason"],
)
queue_wait = Histogram(
    "tasklight_task_queue_wait_seconds",
    "Time from a task's creation to its start by a worker.",
    ["kind"],
    buckets=DURATION_BUCKETS,
)
run_time = Histogram(
    "tasklight_task_run_seconds",
    "Time from a task's start to its end, by outcome.",
    ["kind", "outcome"],
    buckets=DURATION_BUCKETS,
)
notification_lag = Histogram(
    "tasklight_notification_lag_seconds",
    "Time from the commit of a state change to its event being sent on a socket.",
    buckets=LAG_BUCKETS,
)
open_sockets = Gauge(
    "tasklight_open_sockets", "Authenticated WebSockets open on this web process.", multiprocess_mode="livesum"
)
socket_resumes = Counter("tasklight_socket_resumes", "Resume frames received from clients.")
socket_replays = Counter(
    "tasklight_socket_replays",
    "Replays of stored events to a socket, by reason: resume (the client asked), "
    "catch_up (a ping found events the socket missed), gap (a live event skipped ahead), "
    "inbox (a ping found the inbox marked read since the socket last heard of it).",
    ["reason"],
)
replayed_events = Counter("tasklight_replayed_events", "Stored events sent to sockets by replays.")
socket_resyncs = Counter("tasklight_socket_resyncs", "Sockets told to resync: their cursor was past retention.")


def _multiprocess_values_lock() -> Any | None:
    """prometheus_client's one lock for every value in multiprocess mode (a
    variable of values.MultiProcessValue's closure); None in single-process
    mode, where each value has a lock of its own and no process forks."""
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    lock_type = type(threading.Lock())
    for cell in values.ValueClass.inc.__closure__ or ():
        if isinstance(cell.cell_contents, lock_type):
            return cell.cell_contents
    raise RuntimeError("prometheus_client's multiprocess lock was not found: see tasklight/metrics.py")


def _make_forks_wait_for_metric_writes() -> None:
    """prometheus_client guards every value in multiprocess mode with one
    module-level threading.Lock, "as we presume this means there is no
    threading going on" (its comment; prometheus/client_python#431). A
    worker's main process forks pool processes and runs threads that write
    metrics (the pool deaths' thread counts the task it fails): a fork while
    one of them held the lock gave the new pool process that lock held for
    good, and it hung at its first metric, after start_task's commit (the
    task running for good, a pool slot lost). As the logging module does
    with its locks: a fork waits for the lock, and the parent and the child
    each release it."""
    lock = _multiprocess_values_lock()
    if lock is not None:
        os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)


_make_forks_wait_for_metric_writes()


# --- Recording (called from the service layer and the consumer) -------------


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def task_created(kind: str) -> None:
    tasks_created.labels(kind).inc()


def task_handed_back(*, kind: str, reason: str) -> None:
    tasks_handed_back.labels(kind, reason).inc()


def task_started(*, kind: str, created_at: datetime | None, started_at: datetime | None) -> None:
    """Counted once the start commits: a rolled-back start never ran. Robust:
    a metric that cannot be written (its directory gone) never fails a task."""

    def record() -> None:
        tasks_started.labels(kind).inc()
        wait = _seconds_between(created_at, started_at)
        if wait is not None:
            queue_wait.labels(kind).observe(wait)

    transaction.on_commit(record, robust=True)


def task_finished(*, kind: str, outcome: str, started_at: datetime | None, finished_at: datetime | None) -> None:
    """Counted once the end commits; a task cancelled while queued has no run time."""

    def record() -> None:
        tasks_finished.labels(kind, outcome).inc()
        seconds = _seconds_between(started_at, finished_at)
        if seconds is not None:
            run_time.labels(kind, outcome).observe(seconds)

    transaction.on_commit(record, robust=True)


def event_sent(committed_at: Any) -> None:
    """A live event reached a socket; ``committed_at`` is the publisher's
    wall-clock time at commit (machines' clocks must agree, NTP)."""
    if isinstance(committed_at, int | float):
        notification_lag.observe(max(time.time() - committed_at, 0.0))


# --- Tasks queued and running now, from the database --------------------------


class TaskStateCollector(Collector):
    """``tasklight_tasks{state, kind}``: tasks queued and running, counted at
    scrape time with one GROUP BY over the active rows. Finished tasks are not
    counted here (a scan of the whole history per scrape): see
    ``tasklight_tasks_finished_total``."""

    def describe(self) -> Iterable[Metric]:
        # Registering must not query the database (the registry would collect).
        return [GaugeMetricFamily("tasklight_tasks", "Tasks queued or running now.", labels=["state", "kind"])]

    def collect(self) -> Iterable[Metric]:
        from workloads.models import Task, TaskStatus
        from workloads.registry import all_workloads

        family = GaugeMetricFamily("tasklight_tasks", "Tasks queued or running now.", labels=["state", "kind"])
        active = (TaskStatus.QUEUED, TaskStatus.RUNNING)
        counts = dict.fromkeys(((state.value, w.name) for state in active for w in all_workloads()), 0)
        from .health import check_database

        # The pool would wait 10 s for a connection while the database is
        # down: longer than Prometheus waits for the whole scrape.
        if not check_database().ok:
            return []
        try:
            rows = (
                Task.objects.filter(status__in=active)
                .order_by()
                .values_list("status", "kind")
                .annotate(count=Count("*"))
            )
            for state, kind, count in rows:
                counts[(state, kind)] = count
        except DatabaseError as exc:
            # /metrics stays up without the database; the series go missing.
            logger.warning("metrics: could not count tasks: %s", exc)
            return []
        for (state, kind), count in sorted(counts.items()):
            family.add_metric([state, kind], count)
        return [family]


task_states = TaskStateCollector()


# --- The web process's pauses in Python's garbage collector -------------------

# Seconds: a young collection takes well under a millisecond; a full one walks
# every tracked object of the process (~140 per open socket), about a second
# per million on the machines of docs/benchmarks.md.
GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class GcPauses(Collector):
    """``tasklight_gc_pause_seconds{generation}``: how long each collection of
    Python's cyclic garbage collector held the process (every socket and
    request of a web process waits meanwhile), and the longest one.

    Counted by a ``gc.callbacks`` hook into plain lists, not into a
    prometheus_client metric: the hook runs in whichever thread allocated, at
    any point, possibly while that thread holds a metric's lock."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(3)]
        self.sums = [0.0] * 3
        self.longest = 0.0
        self._clock = clock
        self._started = 0.0

    def watch(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        seconds = self._clock() - self._started
        generation = min(info["generation"], 2)
        self.buckets[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, seconds)] += 1
        self.sums[generation] += seconds
        self.longest = max(self.longest, seconds)

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        pauses = HistogramMetricFamily(
            "tasklight_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector in this web process, by generation (2: a full collection).",
            labels=["generation"],
        )
        bounds = [floatToGoString(bound) for bound in (*GC_PAUSE_BUCKETS, math.inf)]
        for generation in range(3):
            cumulative = itertools.accumulate(self.buckets[generation])
            pauses.add_metric([str(generation)], list(zip(bounds, cumulative, strict=True)), self.sums[generation])
        longest = GaugeMetricFamily(
            "tasklight_gc_longest_pause_seconds",
            "The longest pause of Python's cyclic garbage collector in this web process since it started.",
        )
        longest.add_metric([], self.longest)
        return [pauses, longest]


gc_pauses = GcPauses()


class WebMetrics:
    """What a web process's /metrics shows: the process-wide registry and the
    two collectors only a web process has. Not registered with the registry
    itself: Flower imports this module and serves that registry from its
    event loop, where the task count's query is refused (a 500 every scrape)."""

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        yield from task_states.collect()
        yield from gc_pauses.collect()


web_metrics = WebMetrics()


# --- Serving -----------------------------------------------------------------


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: this web process's metrics, for a bearer of METRICS_TOKEN.

    404 while no token is configured (the endpoint does not exist), 401
    without credentials, 403 with the wrong ones.
    """
    expected = settings.METRICS_TOKEN
    if not expected:
        raise Http404
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        response = HttpResponse("Bearer token required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return HttpResponse("Wrong token.\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(web_metrics), content_type=CONTENT_TYPE_LATEST)


class WorkerMetricsServer:
    """In a worker's main process: serves the sum of its pool processes'
    metrics (multiprocess mode) on WORKER_METRICS_HOST:WORKER_METRICS_PORT."""

    def __init__(self) -> None:
        self.server: Any = None

    def start(self) -> None:
        port = settings.WORKER_METRICS_PORT  # checked as the settings load
        if port is None or "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return
        host = os.environ.get("WORKER_METRICS_HOST", "127.0.0.1")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        try:
            self.server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            # Another worker on this machine has the port: the worker still runs.
            logger.error("worker metrics: cannot listen on %s:%s: %s", host, port, exc)
            return
        logger.info("worker metrics on http://%s:%s/metrics", host, port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


worker_metrics_server = WorkerMetricsServer()
