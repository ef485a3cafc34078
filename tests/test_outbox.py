"""Task messages are confirmed by RabbitMQ, in batches (workloads/confirmed.py),
and a POST's is sent after the answer by its process's outbox thread
(workloads/outbox.py). These publish to this machine's RabbitMQ."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from workloads import confirmed, services
from workloads.models import Task
from workloads.outbox import Outbox

from .conftest import delete_queue
from .stack import fork_holding, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def queue_of_their_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """These tests' messages go to a queue of their own, which no worker
    consumes, deleted after: what RabbitMQ confirmed can be counted there, and
    the session's worker does not start their tasks while the teardown empties
    the tables (the two once deadlocked in CI; conftest now tries such a flush
    again for every test)."""
    queue = f"tasklight-test-outbox-{uuid.uuid4().hex[:8]}"
    options = services._message_options

    def to_that_queue(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**options(*args, **kwargs), "queue": queue}

    monkeypatch.setattr(services, "_message_options", to_that_queue)
    yield queue
    delete_queue(queue)


def waiting_in(queue: str) -> int:
    from tasklight.celery import app

    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def tasks_of(owner: User, count: int) -> list[tuple[uuid.UUID | str, str]]:
    made = [Task.objects.create(owner=owner, kind="simulate", params={"seconds": 0}) for _ in range(count)]
    return [(task.id, task.kind) for task in made]


def marked_sent(tasks: list[tuple[uuid.UUID | str, str]]) -> set[str]:
    marked = Task.objects.filter(pk__in=[task_id for task_id, _ in tasks], sent_at__isnull=False)
    return {str(pk) for pk in marked.values_list("pk", flat=True)}


def test_a_batch_is_confirmed_by_rabbitmq_and_marked_sent(alice: User, queue_of_their_own: str) -> None:
    tasks = tasks_of(alice, 120)
    sent = services.send_many(tasks, mark_now=True)
    assert sent == [task_id for task_id, _ in tasks]  # every one confirmed, in order
    assert marked_sent(tasks) == {str(task_id) for task_id, _ in tasks}
    assert waiting_in(queue_of_their_own) == 120  # confirmed: in RabbitMQ's queue, where no worker takes them


def test_a_kept_connection_that_broke_is_replaced_at_once(alice: User) -> None:
    """A kept connection that broke meanwhile (RabbitMQ restarted, say) fails
    the send at once: it is tried again on a new one, not left to the relay
    and no silence begins."""
    first, second = tasks_of(alice, 2)
    assert services.send_many([first]) == [first[0]]
    with confirmed.producers.acquire() as link:
        assert link is not None
        link.connection.connection.sock.shutdown(socket.SHUT_RDWR)  # our end of it gone
        kept = link
    assert services.send_many([second], mark_now=True) == [second[0]]
    assert not services.broker_silence.holds()
    with confirmed.producers.acquire() as link:
        assert link is not kept  # the broken one was dropped


def test_an_outbox_sends_everything_handed_to_it(alice: User) -> None:
    tasks = tasks_of(alice, 30)
    outbox = Outbox()
    for task_id, kind in tasks:
        outbox.send(task_id, kind)
    wait_for(lambda: len(marked_sent(tasks)) == 30, timeout=20, what="all 30 marked sent")
    assert outbox.flush() == 0  # nothing left behind


def test_a_process_forked_while_a_thread_held_the_outbox_lock_starts_afresh() -> None:
    # As sent_marks: a lock held by a thread of the parent at the fork
    # would stay held in the child for good.
    seen = fork_holding(
        "outbox._lock",
        # The parent's task: the parent's to send, not the child's.
        setup="import uuid\nfrom workloads.outbox import outbox\noutbox._items.append((uuid.uuid4(), 'simulate'))",
        child="inherited = len(outbox._items)\nwith outbox._lock:\n    pass\nos._exit(10 + inherited)",
    )
    assert seen == {"ended": True, "exit_code": 10}


class AnswersByHand:
    """The part of an amqp channel Confirms uses, answered by the test."""

    def __init__(self) -> None:
        self.events: dict[str, set] = {"basic_ack": set(), "basic_nack": set()}

    def confirm_select(self) -> None:
        pass

    def answer(self, kind: str, number: int, multiple: bool) -> None:
        for callback in self.events[kind]:
            callback(number, multiple)


@pytest.mark.django_db(transaction=False)
def test_confirms_take_rabbitmqs_answers_by_number_single_or_up_to_it() -> None:
    channel = AnswersByHand()
    confirms = confirmed.Confirms(channel)
    for item in "abcdef":
        confirms.add(item)  # numbered 1 to 6
    channel.answer("basic_ack", 2, multiple=False)  # out of order
    channel.answer("basic_nack", 3, multiple=False)  # refused: not confirmed
    channel.answer("basic_ack", 5, multiple=True)  # 1 and 4, 5; 2 and 3 answered already
    assert confirms.confirmed == ["b", "a", "d", "e"]
    assert list(confirms.waiting.values()) == ["f"]
    channel.answer("basic_ack", 5, multiple=True)  # again: nothing left up to 5
    channel.answer("basic_nack", 6, multiple=True)
    assert confirms.confirmed == ["b", "a", "d", "e"] and not confirms.waiting
