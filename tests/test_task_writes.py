"""Creating a task, and ending it from the worker that runs it
(workloads.services._end with ``running``): on PostgreSQL outside a
transaction, the write and its event are one statement that is its own
transaction; inside one, separate statements. Starting a task locks and
checks its row first, then writes it with its event in one statement. Both store the same state and
event, once, and publish it only once committed."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from live.models import Event, EventStream
from workloads import services
from workloads.models import Task
from workloads.registry import UNSTORABLE_TEXT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What is published, and handed to the outbox to send, in order.
    Nothing leaves the process: the real send, by a thread of its own
    (workloads/outbox.py), would outlive the test."""
    sent: list[Any] = []
    monkeypatch.setattr("live.services._publish_committed", lambda user_id, frame: sent.append((user_id, frame)))

    def sending(task_id: Any, kind: str) -> None:
        sent.append(("broker", str(task_id)))

    monkeypatch.setattr(services.outbox.outbox, "send", sending)
    return sent


@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["one statement", "in a transaction"])
def test_a_new_task_is_stored_with_its_event_then_published_then_sent(
    alice: User, published: list, in_a_transaction: bool
) -> None:
    services.create_task(owner=alice, kind="simulate", params={"seconds": 0})  # the user's stream exists
    before = last_event_id(alice)
    published.clear()
    if in_a_transaction:
        with transaction.atomic():
            task = services.create_task(owner=alice, kind="simulate", params={"seconds": 1})
            assert published == []  # not before the commit
    else:
        with CaptureQueriesContext(connection) as queries:
            task = services.create_task(owner=alice, kind="simulate", params={"seconds": 1})
        assert [q["sql"].split(" (")[0] for q in queries.captured_queries] == ["WITH changed AS"]
    stored = Task.objects.get(pk=task.id)
    assert stored.as_json() == task.as_json()
    assert (stored.owner_id, stored.kind, stored.status, stored.error) == (alice.id, "simulate", "queued", "")
    assert stored.params == task.params and stored.params["seconds"] == 1
    assert stored.created_at == task.created_at and stored.created_at is not None
    event = Event.objects.get(user=alice, sequence=before + 1)
    assert (event.kind, event.task) == ("task.queued", task.as_json())
    frame = {"type": "event", "id": before + 1, "event": "task.queued", "task": event.task}
    assert published == [(alice.id, frame), ("broker", str(task.id))]


def test_a_task_that_cannot_be_stored_stores_no_event_and_sends_nothing(alice: User, published: list) -> None:
    services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    before = last_event_id(alice)
    published.clear()
    ghost = User(id=alice.id + 10_000, username="ghost")  # not in the database: the foreign key refuses it
    with pytest.raises(IntegrityError):
        services.create_task(owner=ghost, kind="simulate", params={"seconds": 0})
    assert published == []
    assert last_event_id(alice) == before
    assert not EventStream.objects.filter(user_id=ghost.id).exists()
    assert not Task.objects.filter(owner_id=ghost.id).exists()


def running_task(owner: User) -> Task:
    queued = services.create_task(owner=owner, kind="simulate", params={"seconds": 0})
    task = services.start_task(task_id=queued.id, redelivered=False)
    assert task is not None
    return task


def last_event_id(owner: User) -> int:
    return EventStream.objects.get(user=owner).last_event_id


def test_a_start_writes_the_task_and_its_event_in_one_statement_published_after_commit(
    alice: User, published: list
) -> None:
    queued = services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    before = last_event_id(alice)
    published.clear()
    with CaptureQueriesContext(connection) as queries:
        started = services.start_task(task_id=queued.id, redelivered=False)
    assert started is not None and started.status == "running" and started.progress == 0
    # Lock and read the task with its owner's stream row, then the update
    # (which counts the owner's running tasks) with its event.
    statements = [q["sql"].split(" ")[0] for q in queries.captured_queries]
    assert statements == ["BEGIN", "SELECT", "WITH", "COMMIT"]
    stored = Task.objects.get(pk=queued.id)
    assert stored.as_json() == started.as_json()
    assert stored.started_at == stored.heartbeat_at == started.started_at is not None
    event = Event.objects.get(user=alice, sequence=before + 1)
    assert (event.kind, event.task) == ("task.started", started.as_json())
    assert published == [(alice.id, {"type": "event", "id": before + 1, "event": "task.started", "task": event.task})]
    # A second copy of the message starts nothing and stores nothing.
    assert services.start_task(task_id=queued.id, redelivered=False) is None
    assert last_event_id(alice) == before + 1


@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["one statement", "in a transaction"])
def test_the_worker_ends_its_task_once_with_one_event(alice: User, published: list, in_a_transaction: bool) -> None:
    task = running_task(alice)
    before = last_event_id(alice)
    published.clear()
    if in_a_transaction:
        with transaction.atomic():
            ended = services.finish_task(task_id=task.id, result={"answer": 42}, running=task)
            assert published == []  # not before the commit
    else:
        with CaptureQueriesContext(connection) as queries:
            ended = services.finish_task(task_id=task.id, result={"answer": 42}, running=task)
        # One round trip: no BEGIN, no separate UPDATE, no COMMIT.
        assert [q["sql"].split(" (")[0] for q in queries.captured_queries] == ["WITH changed AS"]
    assert ended is not None and ended.status == "succeeded" and ended.progress == 100
    stored = Task.objects.get(pk=task.id)
    assert (stored.status, stored.result, stored.error, stored.progress) == ("succeeded", {"answer": 42}, "", 100)
    assert stored.finished_at == ended.finished_at
    event = Event.objects.get(user=alice, sequence=before + 1)
    assert event.kind == "task.succeeded"
    assert event.task == ended.as_json() == stored.as_json()
    assert published == [(alice.id, {"type": "event", "id": before + 1, "event": "task.succeeded", "task": event.task})]
    assert last_event_id(alice) == before + 1

    # A repeat (a redelivered message, the watchdog) changes nothing.
    published.clear()
    assert services.fail_task(task_id=task.id, error="late", running=task) is None
    assert Task.objects.get(pk=task.id).status == "succeeded"
    assert last_event_id(alice) == before + 1
    assert Event.objects.filter(user=alice).count() == before + 1
    assert published == []


PAST_64_BITS = "return it as text (JavaScript reads no integer past 2**53 exactly)."


def nested(levels: int) -> list[Any]:
    """Arrays in arrays, ``levels`` deep: [] is one level, [[]] two."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"when": datetime(2026, 1, 1)}, "The workload returned a result that is not JSON."),
        ({"ratio": float("nan")}, "The workload returned a result that is not JSON."),
        ([float("inf")], "The workload returned a result that is not JSON."),
        ({"text": "a\x00b"}, "The workload returned text that cannot be stored, at result.text: " + UNSTORABLE_TEXT),
        ({"k\ud800": 1}, "The workload returned text that cannot be stored, at result.k\\ud800: " + UNSTORABLE_TEXT),
        # These three raised on their way to the database: the task stayed running.
        ({"t": ("a\x00b",)}, "The workload returned text that cannot be stored, at result.t.0: " + UNSTORABLE_TEXT),
        (nested(101), "The workload returned a result nested more than 100 levels deep."),
        (nested(100_000), "The workload returned a result nested more than 100 levels deep."),
        # Stored, but no event of the task could be pushed live (msgpack's 64 bits).
        ({"n": [2**64]}, "The workload returned an integer past 64 bits, at result.n.0: " + PAST_64_BITS),
        ({2**64: "k"}, f"The workload returned an integer past 64 bits, at result.{2**64}: " + PAST_64_BITS),
    ],
    ids=[
        "a datetime",
        "NaN",
        "infinity",
        "NUL",
        "a lone surrogate",
        "NUL in a tuple",
        "101 deep",
        "100000 deep",
        "a 65-bit integer",
        "a 65-bit key",
    ],
)
@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["one statement", "in a transaction"])
def test_a_result_the_database_cannot_store_fails_the_task_readably(
    alice: User, published: list, in_a_transaction: bool, result: Any, error: str
) -> None:
    # Before, NaN, infinity, NUL and lone surrogates passed json.dumps and
    # PostgreSQL refused the UPDATE: the worker's call raised, the message was
    # acknowledged, and the task stayed running for good (a cancel could not
    # end it either, and it held a place of its owner's running cap).
    task = running_task(alice)
    if in_a_transaction:
        with transaction.atomic():
            ended = services.finish_task(task_id=task.id, result=result, running=task)
    else:
        ended = services.finish_task(task_id=task.id, result=result, running=task)
    assert ended is not None
    stored = Task.objects.get(pk=task.id)
    assert (stored.status, stored.result, stored.error) == ("failed", None, error)
    assert Event.objects.filter(user=alice).order_by("-sequence").first().kind == "task.failed"


def test_a_result_holding_integers_of_64_bits_is_stored(alice: User, published: list) -> None:
    task = running_task(alice)
    ended = services.finish_task(task_id=task.id, result={"least": -(2**63), "most": 2**64 - 1}, running=task)
    assert ended is not None and ended.status == "succeeded"
    assert Task.objects.get(pk=task.id).result == {"least": -(2**63), "most": 2**64 - 1}


def test_a_result_100_levels_deep_is_stored(alice: User, published: list) -> None:
    task = running_task(alice)
    ended = services.finish_task(task_id=task.id, result={"tree": nested(99)}, running=task)
    assert ended is not None and ended.status == "succeeded"
    assert Task.objects.get(pk=task.id).result == {"tree": nested(99)}


@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["one statement", "in a transaction"])
def test_an_error_with_text_the_database_cannot_store_is_stored_escaped(
    alice: User, published: list, in_a_transaction: bool
) -> None:
    # A workload's own message (WorkloadFailed, or an exception's str) may
    # quote what it read: before, a NUL or a lone surrogate in it made
    # PostgreSQL refuse the UPDATE, and the task stayed running.
    task = running_task(alice)
    if in_a_transaction:
        with transaction.atomic():
            ended = services.fail_task(task_id=task.id, error="Row 3 is malformed: a\x00b \udc80", running=task)
    else:
        ended = services.fail_task(task_id=task.id, error="Row 3 is malformed: a\x00b \udc80", running=task)
    assert ended is not None
    stored = Task.objects.get(pk=task.id)
    assert (stored.status, stored.error) == ("failed", "Row 3 is malformed: a\\x00b \\udc80")
    assert Event.objects.filter(user=alice).order_by("-sequence").first().task["error"] == stored.error


def cut(kept: str, marker: str) -> str:
    """``kept``, cut to end with ``marker`` at 2000 characters."""
    return kept[: 2000 - len(marker)] + marker


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        ("E" * 2000, "E" * 2000),
        ("E" * 2001, cut("E" * 2000, "… [cut: 2,001 characters in all]")),
        ("E" * 10_000_000, cut("E" * 2000, "… [cut: 10,000,000 characters in all]")),
        # Escaped (\x00 is four characters), then cut to the length.
        ("\x00" * 600, cut("\\x00" * 600, "… [cut: 600 characters in all]")),
    ],
    ids=["2000", "2001", "10 million", "escapes past the length"],
)
def test_an_error_is_stored_and_sent_cut_to_2000_characters(
    alice: User, published: list, error: str, stored: str
) -> None:
    task = running_task(alice)
    published.clear()
    ended = services.fail_task(task_id=task.id, error=error, running=task)
    assert ended is not None and ended.error == stored
    assert len(stored) <= services.MAX_ERROR_LENGTH == 2000
    assert Task.objects.get(pk=task.id).error == stored
    assert Event.objects.filter(user=alice).order_by("-sequence").first().task["error"] == stored
    assert [frame["task"]["error"] for _, frame in published] == [stored]


def test_a_task_ended_elsewhere_first_is_not_ended_again(alice: User, published: list) -> None:
    task = running_task(alice)
    # Its owner's cancel, ended by the watchdog (no `running`) before the worker ends it.
    services.end_cancelled(task_id=task.id)
    before = last_event_id(alice)
    published.clear()
    assert connection.vendor == "postgresql" and not connection.in_atomic_block
    assert services.finish_task(task_id=task.id, result=None, running=task) is None
    assert Task.objects.get(pk=task.id).status == "cancelled"
    assert last_event_id(alice) == before
    assert published == []


def test_a_failure_is_stored_with_its_error(alice: User, bob: User, published: list) -> None:
    task = running_task(alice)
    bobs = running_task(bob)
    bob_before = last_event_id(bob)
    ended = services.fail_task(task_id=task.id, error="The workload crashed: boom", running=task)
    assert ended is not None
    stored = Task.objects.get(pk=task.id)
    assert (stored.status, stored.error, stored.result) == ("failed", "The workload crashed: boom", None)
    assert Event.objects.filter(user=alice).order_by("-sequence").first().kind == "task.failed"
    # Another user's counter and task are untouched.
    assert last_event_id(bob) == bob_before
    assert Task.objects.get(pk=bobs.id).status == "running"


def test_a_start_over_the_owners_running_cap_stores_nothing_and_raises(
    alice: User, bob: User, published: list, settings: Any
) -> None:
    settings.MAX_RUNNING_TASKS_PER_USER = 1
    first = running_task(alice)
    waiting = services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    before = last_event_id(alice)
    published.clear()
    with pytest.raises(services.OwnerAtCapacity):
        services.start_task(task_id=waiting.id, redelivered=False)
    assert Task.objects.get(pk=waiting.id).status == "queued"
    assert last_event_id(alice) == before
    assert published == []
    # Another user's start is not held back by alice's cap.
    assert running_task(bob).status == "running"
    # Once alice's first task has ended, the waiting one starts.
    assert services.finish_task(task_id=first.id, result=None, running=first) is not None
    started = services.start_task(task_id=waiting.id, redelivered=False)
    assert started is not None and started.status == "running"


def test_a_task_whose_owner_has_no_event_stream_yet_still_starts(alice: User, published: list) -> None:
    # Not made through the service layer: no task.queued event, no stream row.
    task = Task.objects.create(owner=alice, kind="simulate", params={"seconds": 0})
    assert not EventStream.objects.filter(user=alice).exists()
    started = services.start_task(task_id=task.id, redelivered=False)
    assert started is not None and Task.objects.get(pk=task.id).status == "running"
    assert Event.objects.get(user=alice, sequence=1).kind == "task.started"


def test_a_start_waiting_for_the_owners_lock_counts_the_start_that_held_it(
    alice: User, published: list, settings: Any
) -> None:
    """The cap holds across processes: a start that waited for the owner's
    row lock counts the task the holder started, once the holder commits."""
    settings.MAX_RUNNING_TASKS_PER_USER = 1
    held = services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    waiting = services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    outcome: list[Any] = []

    def start_waiting() -> None:
        try:
            outcome.append(services.start_task(task_id=waiting.id, redelivered=False))
        except services.OwnerAtCapacity as exc:
            outcome.append(exc)
        finally:
            connection.close()  # this thread's own connection

    with transaction.atomic():
        # This connection starts one task and keeps the owner's lock until commit.
        assert services.start_task(task_id=held.id, redelivered=False) is not None
        thread = threading.Thread(target=start_waiting)
        thread.start()
        # Wait until the other start is blocked on a lock, then commit.
        deadline = time.monotonic() + 10
        while not blocked_on_a_lock():
            assert time.monotonic() < deadline, "the second start never waited for the owner's lock"
            assert thread.is_alive(), outcome
            time.sleep(0.02)
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], services.OwnerAtCapacity), outcome
    assert Task.objects.get(pk=waiting.id).status == "queued"


def blocked_on_a_lock() -> bool:
    """Whether another connection to this database is waiting for a lock."""
    with connection.cursor() as cursor:
        # Inside a transaction PostgreSQL keeps the first view of its
        # statistics: drop it, to see the other connection now.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


def test_a_running_task_abandoned_by_its_worker_is_sent_again_and_taken_over(
    alice: User, published: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a broker that does not deliver a dead worker's message again
    (embedded mode): the housekeeper's resend_abandoned."""
    abandoned, alive = running_task(alice), running_task(alice)
    queued = services.create_task(owner=alice, kind="simulate", params={"seconds": 0})
    sends: list[tuple[str, bool]] = []

    def sending(tasks: list[tuple[Any, str]], **kwargs: Any) -> list[Any]:
        sends.extend((str(task_id), kwargs["again"]) for task_id, _ in tasks)
        return [task_id for task_id, _ in tasks]

    monkeypatch.setattr(services, "send_many", sending)
    long_ago = timezone.now() - timedelta(seconds=60)
    Task.objects.filter(pk__in=[abandoned.pk, queued.pk]).update(heartbeat_at=long_ago)
    events = last_event_id(alice)

    assert services.resend_abandoned(older_than=30) == 1
    assert sends == [(str(abandoned.id), True)]
    assert services.resend_abandoned(older_than=30) == 0  # not sent again before it is taken over
    taken_over = services.start_task(task_id=abandoned.id, redelivered=True)  # the message, "again"
    assert taken_over is not None and taken_over.status == "running"
    assert (timezone.now() - Task.objects.get(pk=abandoned.pk).heartbeat_at).total_seconds() < 5  # ours now
    assert last_event_id(alice) == events  # no second task.started
    assert services.resend_abandoned(older_than=30) == 0
    assert Task.objects.get(pk=alive.pk).status == "running"


def lapse_lease(task: Task) -> None:
    """As if its worker died: its lease was last renewed a minute ago."""
    Task.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))


def test_a_task_whose_worker_died_runs_again_until_its_last_start_then_fails(
    alice: User, published: list, settings: Any
) -> None:
    """A workload that ends its own process (os._exit, a segfault, the
    out-of-memory killer) ran again on every redelivery, for good."""
    settings.TASK_MAX_STARTS = 2
    task = running_task(alice)
    assert Task.objects.get(pk=task.pk).starts == 1
    events = last_event_id(alice)
    lapse_lease(task)
    again = services.start_task(task_id=task.id, redelivered=True)
    assert again is not None and Task.objects.get(pk=task.pk).starts == 2
    assert last_event_id(alice) == events  # taken over without a second task.started
    lapse_lease(task)
    assert services.start_task(task_id=task.id, redelivered=True) is None
    failed = Task.objects.get(pk=task.pk)
    assert (failed.status, failed.starts) == ("failed", 2)
    assert failed.error == "Its worker process died 2 times while running it, so it is not run again."
    assert [e.kind for e in Event.objects.filter(user=alice, sequence__gt=events)] == ["task.failed"]


def test_a_resumed_task_runs_again_without_counting_a_start(alice: User, published: list, settings: Any) -> None:
    """A run the database's outage cut short is no death: its resume takes
    the task over once its lease has lapsed, on its last start too."""
    settings.TASK_MAX_STARTS = 1
    task = running_task(alice)
    events = last_event_id(alice)
    with pytest.raises(services.StillRunningElsewhere):
        services.start_task(task_id=task.id, redelivered=True, resumed=True)  # its lease is fresh
    lapse_lease(task)
    resumed = services.start_task(task_id=task.id, redelivered=True, resumed=True)
    assert resumed is not None and resumed.status == "running"
    stored = Task.objects.get(pk=task.pk)
    assert stored.starts == 1
    assert (timezone.now() - stored.heartbeat_at).total_seconds() < 5  # ours now
    assert last_event_id(alice) == events  # no second task.started


def test_a_pool_process_that_died_on_the_last_start_fails_its_task_naming_how(
    alice: User, published: list, settings: Any
) -> None:
    settings.TASK_MAX_STARTS = 2
    task = running_task(alice)
    still = services.pool_process_died(task_id=task.id, how="signal 9 (SIGKILL)")
    assert still is not None and still.status == "running"  # its message goes back: it runs again
    lapse_lease(task)
    assert services.start_task(task_id=task.id, redelivered=True) is not None
    ended = services.pool_process_died(task_id=task.id, how="signal 11 (SIGSEGV)")
    assert ended is not None and ended.status == "failed"
    assert Task.objects.get(pk=task.pk).error == (
        "Its worker process died 2 times while running it (the last time: signal 11 (SIGSEGV)), so it is not run again."
    )
    assert services.pool_process_died(task_id=task.id, how="exitcode 1") is None  # finished: nothing more
    assert services.start_task(task_id=task.id, redelivered=True) is None  # its message is dropped


def test_a_cancelled_task_whose_worker_died_on_its_last_start_ends_cancelled(
    alice: User, published: list, settings: Any
) -> None:
    settings.TASK_MAX_STARTS = 1
    task = running_task(alice)
    services.cancel_task(task_id=task.id, owner=alice)
    assert services.pool_process_died(task_id=task.id, how="exitcode 1") is None
    lapse_lease(task)
    assert services.start_task(task_id=task.id, redelivered=True) is None
    cancelled = Task.objects.get(pk=task.pk)
    assert (cancelled.status, cancelled.error) == ("cancelled", "Cancelled by its owner.")


@pytest.mark.parametrize("again", [False, True])
def test_a_task_is_sent_with_the_args_repr_celery_would_write(monkeypatch: pytest.MonkeyPatch, again: bool) -> None:
    """send_to_broker gives Celery the repr of its arguments (what logs and
    Flower show) instead of letting it build them with saferepr: the same text."""
    from celery.utils.saferepr import saferepr

    from tasklight.celery import app

    headers: list[dict[str, Any]] = []
    send_task_message = app.amqp.send_task_message

    def sending(producer: Any, name: str, message: Any, **options: Any) -> Any:
        headers.append(message.headers)
        return send_task_message(producer, name, message, **options)  # confirmed by RabbitMQ: really sent

    monkeypatch.setattr(app.amqp, "send_task_message", sending)
    task_id = uuid.uuid4()

    assert services.send_to_broker(task_id=task_id, kind="reverse", again=again, mark_now=True)

    assert len(headers) == 1
    assert headers[0]["argsrepr"] == saferepr((str(task_id),)) == f"('{task_id}',)"
    assert headers[0]["kwargsrepr"] == saferepr({"again": again}) == f"{{'again': {again}}}"
