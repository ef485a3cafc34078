"""Workloads that only the tests install (WORKLOAD_MODULES=tests.workloads_for_tests):
one written by the recipe in docs/adding-a-workload.md (trimmed), three that
misbehave, one that returns when cancelled, one that reports progress fast, one
that reports a progress that is not a percent, one that ends badly, one that
ends its own process, one that ends its own database connection, one that
fails with a long message, one that names its database and two whose
parameters take every shape the home page's form renders."""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any, Literal

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from workloads.registry import Run, WorkloadFailed, workload


class ReverseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(max_length=1000, description="The text to reverse.")]
    times: Annotated[int, Field(ge=1, le=10, description="How many copies.")] = 1


@workload(title="Reverse", soft_time_limit=10, time_limit=20)
def reverse(params: ReverseParams, run: Run) -> dict[str, Any]:
    """Reverses a text; the recipe's example."""
    run.stop_if_cancelled()
    return {"reversed": params.text[::-1] * params.times}


class SecondsParams(BaseModel):
    seconds: Annotated[float, Field(ge=0, le=120)] = 30


@workload(title="Ignores its time limit", soft_time_limit=1, time_limit=2)
def ignores_time_limit(params: SecondsParams, run: Run) -> dict[str, Any]:
    """Swallows the soft time limit, so only the hard one can stop it."""
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return {"ran": params.seconds}


@workload(title="Sleeps in the database", soft_time_limit=1, time_limit=10)
def sleeps_in_the_database(params: SecondsParams, run: Run) -> dict[str, Any]:
    """Waits in PostgreSQL (pg_sleep): its soft time limit strikes in the middle of a query."""
    from django.db import connection

    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.5)")
    return {"ran": params.seconds}


@workload(title="Ignores cancellation")
def ignores_cancellation(params: SecondsParams, run: Run) -> dict[str, Any]:
    """Never checks run.cancelled(): only the watchdog can stop it."""
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return {"ran": params.seconds}


@workload(title="Returns when cancelled")
def returns_when_cancelled(params: SecondsParams, run: Run) -> dict[str, Any]:
    """Checks run.cancelled() and returns what it did so far, as the recipe allows."""
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline and not run.cancelled():
        time.sleep(0.05)
    return {"stopped_early": run.cancelled()}


class ChatterParams(BaseModel):
    count: Annotated[int, Field(ge=1, le=100_000)] = 10_000


@workload(title="Chatter")
def chatter(params: ChatterParams, run: Run) -> dict[str, Any]:
    """Publishes ``count`` progress frames straight to the owner's sockets,
    without coalescing: a load on the worker's publisher."""
    from live.services import push_progress
    from workloads.models import Task

    task = Task.objects.filter(status="running", kind="chatter").order_by("-started_at").first()
    assert task is not None
    for n in range(params.count):
        push_progress(user_id=task.owner_id, task={"id": str(task.id), "progress": n})
    return {"published": params.count}


class ProgressParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    report: Literal["nan", "text"]


BAD_PROGRESS: dict[str, Any] = {"nan": float("nan"), "text": "50"}


@workload(title="Reports progress")
def reports_progress(params: ProgressParams, run: Run) -> dict[str, Any]:
    """Reports a progress that is not a number of percent: NaN, or a string."""
    run.progress(BAD_PROGRESS[params.report])
    return {"reported": params.report}


class UnreadableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class EndingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    how: Literal["unreadable_error", "tuple_with_nul", "deep_result", "unstorable_outcome", "huge_integer"]


@workload(title="Ends badly")
def ends_badly(params: EndingParams, run: Run) -> Any:
    """Ends in a way that once left its task running for good: an exception
    whose str() raises, a result whose NUL hides in a tuple or that nests
    past Python's recursion limit, or (standing in for what no check
    foresees) an outcome the database refuses once; or in a way whose
    task.succeeded could not be pushed live: an integer past 64 bits."""
    if params.how == "unreadable_error":
        raise UnreadableError
    if params.how == "tuple_with_nul":
        return {"rows": ("a\x00b",)}
    if params.how == "huge_integer":
        return {"counts": [1, 2**64]}  # one past what 64 bits hold
    if params.how == "deep_result":
        nested: list[Any] = []
        for _ in range(100_000):
            nested = [nested]
        return nested
    from django.db import DataError

    from workloads import services

    finish_task = services.finish_task

    def refused(**kwargs: Any) -> Any:
        services.finish_task = finish_task  # this pool process's next task ends as usual
        raise DataError("refused, as PostgreSQL may")

    services.finish_task = refused
    return {"ok": True}


class LongMessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    length: Annotated[int, Field(ge=1, le=10_000_000)]
    crash: StrictBool = False


@workload(title="Fails at length")
def fails_at_length(params: LongMessageParams, run: Run) -> Any:
    """Fails with a message ``length`` characters long: its own
    (WorkloadFailed) or, with ``crash``, a RuntimeError's."""
    message = "E" * params.length
    if params.crash:
        raise RuntimeError(message)
    raise WorkloadFailed(message)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@workload(title="Database backend")
def database_backend(params: NoParams, run: Run) -> dict[str, Any]:
    """Which PostgreSQL backend serves this pool process, and under what name."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        pid, name = cursor.fetchone()
    return {"pid": pid, "application_name": name}


@workload(title="Ends its database connection")
def ends_its_database_connection(params: NoParams, run: Run) -> Any:
    """Has PostgreSQL end the backend serving it, as a server's
    idle_in_transaction_session_timeout does to a workload that holds a
    transaction open: its connection is lost, the database is not away."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return None


class Format(enum.StrEnum):
    csv = "csv"
    json = "json"


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Annotated[int, Field(ge=0)] = 0
    end: Annotated[int, Field(ge=0)] = 30


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: Annotated[str, Field(min_length=1, max_length=40, description="The table to export.")]
    format: Format = Format.csv
    level: Annotated[Literal[1, 3, 9] | None, Field(description="Compression level; empty for none.")] = None
    version: Literal["v2"] = "v2"
    note: Annotated[str | None, Field(min_length=3, max_length=20)] = None
    dry_run: StrictBool = False
    notify: Annotated[StrictBool | None, Field(description="Mail the owner; empty for their setting.")] = None
    batch: Annotated[int, Field(ge=10, le=10_000, multiple_of=10)] = 100
    limit: Annotated[int | None, Field(ge=1)] = None
    columns: Annotated[list[str], Field(max_length=5)] = []
    window: Window = Window()


class PickParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["fast", "slow"]
    key: int | str = 0
    tag: Literal["only"]


@workload(title="Picks")
def picks(params: PickParams, run: Run) -> dict[str, Any]:
    """Returns its parameters: a choice the user must make, a union, a required one-value choice."""
    return params.model_dump(mode="json")


@workload(title="Export")
def export(params: ExportParams, run: Run) -> dict[str, Any]:
    """Returns its parameters as the worker parsed them: every shape of parameter the form renders."""
    return params.model_dump(mode="json")


class DyingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    how: Literal["sys_exit", "os_exit", "segfault", "killed", "first_start_only"]


@workload(title="Ends its process")
def ends_its_process(params: DyingParams, run: Run) -> Any:
    """Ends the pool process that runs it: sys.exit(2) (as argparse does on
    a bad argument), os._exit(1), a segfault, SIGKILL (as the kernel's
    out-of-memory killer sends), or os._exit(1) the first time its task
    starts and returns the next time."""
    import ctypes
    import os
    import signal
    import sys

    from tasklight.logs import task_id
    from workloads.models import Task

    if params.how == "first_start_only":
        starts = Task.objects.get(pk=str(task_id.get())).starts
        if starts > 1:
            return {"starts": starts}
        os._exit(1)
    if params.how == "sys_exit":
        sys.exit(2)
    if params.how == "os_exit":
        os._exit(1)
    if params.how == "segfault":
        ctypes.string_at(0)
    os.kill(os.getpid(), signal.SIGKILL)
    return None
