"""Stored events and per-user event counters in the Django admin: view only.
An event is history a client may replay; nothing edits or deletes one here
(retention deletes old ones, docs/events.md)."""

from __future__ import annotations

from typing import Any, get_args

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from tasklight.admin_paging import LargeTableAdminMixin

from .events import EventKind
from .models import Event, EventStream


class ReadOnlyAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventKindFilter(admin.SimpleListFilter):
    """The event kinds from the protocol, not a SELECT DISTINCT over the table."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(kind, kind) for kind in get_args(EventKind)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "sequence", "kind", "task_id", "task_status", "created_at")
    list_filter = (EventKindFilter, "created_at")
    # The username hits its unique index; a task id is read from the stored
    # snapshot (no index: a scan, bounded by the other filters).
    search_fields = ("user__username__exact", "=task__id")
    search_help_text = "An exact username or a task id."
    list_select_related = ("user",)
    # The primary key: newest first without a sort over the table.
    ordering = ("-id",)
    list_per_page = 50
    fields = ("id", "user", "sequence", "kind", "created_at", "task")

    @admin.display(description="task")
    def task_id(self, event: Event) -> str:
        return str(event.task.get("id", ""))

    @admin.display(description="task status")
    def task_status(self, event: Event) -> str:
        return str(event.task.get("status", ""))


@admin.register(EventStream)
class EventStreamAdmin(ReadOnlyAdmin):
    list_display = ("user", "last_event_id", "read_up_to")
    search_fields = ("user__username__exact",)
    search_help_text = "An exact username."
    list_select_related = ("user",)
    ordering = ("-user_id",)
    fields = ("user", "last_event_id", "read_up_to")
