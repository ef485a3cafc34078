"""Admin change lists over tables that grow to millions of rows, read-only.

Django's paginator counts the whole filtered queryset on every page view. For
the task and event tables that is a sequential scan per click; this paginator
counts exactly only up to a bound and takes PostgreSQL's planner estimate
beyond it, so an admin page costs the same on 1,000 rows as on 10 million.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any, ClassVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import DatabaseError, connections
from django.db.models import QuerySet
from django.http import HttpRequest

logger = logging.getLogger(__name__)

# Below this many rows the count is exact; above it, "about N".
EXACT_COUNT_LIMIT = 10_000


def planner_estimate(queryset: QuerySet[Any]) -> int:
    """The number of rows PostgreSQL expects the query to return; 0 elsewhere."""
    if connections[queryset.db].vendor != "postgresql":
        return 0
    try:
        plan = json.loads(queryset.order_by().explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])
    except (DatabaseError, KeyError, IndexError, TypeError, ValueError) as exc:
        logger.warning("admin: no row estimate for a change list: %s", exc)
        return 0


class LargeTablePaginator(Paginator):
    """Counts at most EXACT_COUNT_LIMIT + 1 rows; past that, the planner's estimate."""

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if not isinstance(object_list, QuerySet):
            return super().count
        # COUNT(*) over a LIMITed subquery: stops reading at the bound.
        bounded = object_list.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if bounded <= EXACT_COUNT_LIMIT:
            return bounded
        return max(planner_estimate(object_list), bounded)


class LargeTableAdminMixin:
    """For ModelAdmins over big tables: no unfiltered COUNT(*) next to the
    filtered one, and the bounded count above for the pages."""

    show_full_result_count: ClassVar[bool] = False
    paginator: ClassVar[type] = LargeTablePaginator


class ReadOnlyAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    """Shown, never added, edited or deleted here: tasks change state only
    through workloads.services, events are history a client may replay."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class KnownValuesFilter(admin.SimpleListFilter):
    """Filters a column on values known in code (``values``), not on a
    SELECT DISTINCT over the whole table, which Django's own filter runs."""

    parameter_name = "kind"
    title = "kind"

    def values(self) -> list[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in self.values()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.parameter_name: self.value()}) if self.value() else queryset
