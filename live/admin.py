"""Stored events and per-user event counters in the Django admin: view only.
An event is history a client may replay; nothing edits or deletes one here
(retention deletes old ones, docs/events.md)."""

from __future__ import annotations

from typing import get_args

from django.contrib import admin

from tasklight.admin_paging import KnownValuesFilter, ReadOnlyAdmin

from .events import EventKind
from .models import Event, EventStream


class EventKindFilter(KnownValuesFilter):
    """The event kinds from the protocol."""

    def values(self) -> list[str]:
        return list(get_args(EventKind))


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
