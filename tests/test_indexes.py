"""The task and event tables carry the indexes their queries need, and no
more: every change of a task's state writes every index of its table whose
condition the new row meets (workloads/migrations/0005_fewer_indexes.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
        return {name for (name,) in cursor.fetchall()}


def plan(sql: str, params: list[Any]) -> str:
    """The plan PostgreSQL would use if the table were big (no sequential
    scan while another way exists)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_task_and_event_tables_have_exactly_the_indexes_their_queries_use() -> None:
    assert indexes("workloads_task") == {
        "workloads_task_pkey",
        "task_owner_recent",
        "task_recent",
        "task_owner_running",
        "task_unsent",
        "task_active",
        "task_retries",
    }
    assert indexes("live_event") == {"live_event_pkey", "event_user_sequence", "event_created"}


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        # A user's tasks (the list, deleting a user), their events (replay, deleting a user).
        ("SELECT id FROM workloads_task WHERE owner_id = %s", "task_owner_recent"),
        ("SELECT id FROM live_event WHERE user_id = %s", "event_user_sequence"),
        # Deleting a task nulls its retries' retry_of.
        ("SELECT id FROM workloads_task WHERE retry_of_id = %s", "task_retries"),
    ],
)
def test_the_lookups_of_the_dropped_indexes_still_use_an_index(sql: str, index: str) -> None:
    param: Any = 1 if "retry_of" not in sql else "00000000-0000-0000-0000-000000000000"
    # "Index Scan using X on", "Index Only Scan using X on" or "Bitmap Index Scan on X".
    assert re.search(rf"Index (Only )?Scan (using {index} on|on {index}\b)", plan(sql, [param])), plan(sql, [param])


def test_the_admins_task_list_reads_an_index_instead_of_sorting_the_table() -> None:
    """Its default order, everyone's tasks newest first, and a page of it
    (docs/operations.md#admin)."""
    sql = "SELECT id FROM workloads_task ORDER BY created_at DESC, id DESC LIMIT 50"
    assert re.search(r"Index (Only )?Scan using task_recent on", plan(sql, [])), plan(sql, [])
    assert "Sort" not in plan(sql, []), plan(sql, [])
