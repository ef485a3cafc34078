"""Deleting what Tasklight keeps only for a while (docs/operations.md, "What
Tasklight keeps, and for how long"): expired events, idempotency keys and
sessions, deleted by every worker's hourly cleanup (workloads/tasks.py).

In batches: however much has piled up (workers stopped for weeks, a
retention shortened), each DELETE is a short transaction that locks a batch
of rows at most, and never holds back vacuum or replication for long.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

BATCH = 10_000


def delete_in_batches(expired: QuerySet[Any], *, batch: int = BATCH) -> int:
    """Deletes the rows of ``expired`` ``batch`` at a time; returns how many
    of its model's rows went. Each batch is deleted under the same filter, so
    a row that stopped matching meanwhile stays."""
    label = expired.model._meta.label
    deleted = 0
    while True:
        keys = list(expired.values_list("pk", flat=True)[:batch])
        if not keys:
            return deleted
        deleted += expired.filter(pk__in=keys).delete()[1].get(label, 0)
