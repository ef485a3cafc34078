"""Kept database connections are checked before use unless they were used a
moment ago (tasklight/db.py): the web process's pool and a worker's
connection kept from task to task. A connection closed under the check
stands for one PostgreSQL dropped: its check fails, and skipping it shows."""

from __future__ import annotations

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.db.utils import ConnectionHandler

from tasklight import db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_connection() -> psycopg.Connection:
    """A plain connection to the tests' PostgreSQL, as the pool makes them."""
    return psycopg.connect(**{**connection.get_connection_params(), "autocommit": True})


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(db.time, "monotonic", clock)
    return clock


def test_a_pooled_connection_handed_out_a_moment_ago_is_not_checked_again(clock: Clock) -> None:
    conn = a_connection()
    db.check_pooled_connection(conn)  # checked: it works
    conn.close()  # broken from now on, as if PostgreSQL had restarted
    clock.now += db.RECENTLY_USED_SECONDS * 0.8
    db.check_pooled_connection(conn)  # handed out a moment ago: not checked
    clock.now += db.RECENTLY_USED_SECONDS * 0.8
    db.check_pooled_connection(conn)  # the last hand-out counts, not the first check
    clock.now += db.RECENTLY_USED_SECONDS * 1.2
    with pytest.raises(psycopg.OperationalError):
        db.check_pooled_connection(conn)  # idle longer: checked, and found broken


def test_a_never_seen_connection_is_checked(clock: Clock) -> None:
    conn = a_connection()
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        db.check_pooled_connection(conn)


@pytest.mark.django_db(transaction=True)
def test_a_workers_connection_used_by_the_last_task_a_moment_ago_is_not_checked(monkeypatch, clock: Clock) -> None:
    """What run_task does before and after each task (workloads/tasks.py)."""
    assert connection.settings_dict["CONN_HEALTH_CHECKS"]
    connection.ensure_connection()
    monkeypatch.setattr(connection, "close_at", None)  # kept, as a worker's (WORKER_CONN_MAX_AGE)
    checks: list[bool] = []
    is_usable = connection.is_usable

    def counted_is_usable() -> bool:
        checks.append(is_usable())
        return checks[-1]

    monkeypatch.setattr(connection, "is_usable", counted_is_usable)

    def a_task() -> None:
        close_old_connections()
        db.skip_check_if_just_used()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        db.mark_used()

    a_task()
    assert checks == [True]  # no task before it: checked
    clock.now += db.RECENTLY_USED_SECONDS * 0.8
    a_task()
    assert checks == [True]  # the last task used it a moment ago
    clock.now += db.RECENTLY_USED_SECONDS * 1.2
    a_task()
    assert checks == [True, True]  # idle longer: checked


@pytest.mark.django_db
def test_a_workers_sqlite_connection_runs_tasks_without_the_record(monkeypatch) -> None:
    """Embedded mode (make run): sqlite3's connections take no weak reference,
    so they are never recorded nor skipped. SQLite's check costs nothing."""
    sqlite = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})["default"]
    monkeypatch.setattr(db, "connection", sqlite)
    try:
        answers = []
        for _ in range(2):  # as run_task does for two tasks in a row
            db.skip_check_if_just_used()
            with sqlite.cursor() as cursor:
                cursor.execute("SELECT 1")
                answers.append(cursor.fetchone())
            db.mark_used()  # raised TypeError, after every task
        assert answers == [(1,), (1,)]
    finally:
        sqlite.close()
