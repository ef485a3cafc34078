"""Tasks in the Django admin: read-only, with one action that goes through the
service layer (a task's state changes only in workloads.services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tasklight.admin_paging import KnownValuesFilter, ReadOnlyAdmin

from . import services
from .models import Task, TaskStatus
from .registry import all_workloads


class KindFilter(KnownValuesFilter):
    """The installed workloads, from the registry."""

    def values(self) -> list[str]:
        return sorted(workload.name for workload in all_workloads())


class UnsentFilter(admin.SimpleListFilter):
    """Queued tasks the broker never accepted: the relay's worklist (and its index)."""

    title = "broker"
    parameter_name = "unsent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "not sent yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(status=TaskStatus.QUEUED, sent_at__isnull=True)
        return queryset


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "owner", "status", "progress", "created_at", "started_at", "finished_at")
    list_filter = ("status", KindFilter, UnsentFilter, "created_at", "finished_at")
    # Exact lookups only: the id and the username hit their unique indexes,
    # and an id that is not a UUID is skipped rather than cast to text.
    search_fields = ("id__exact", "owner__username__exact", "kind__exact")
    search_help_text = "A task id, an owner's exact username or a workload's name."
    list_select_related = ("owner",)
    list_per_page = 50
    actions = ("cancel_selected",)
    fields = (
        "id",
        "owner",
        "kind",
        "status",
        "progress",
        "params",
        "result",
        "error",
        "created_at",
        "sent_at",
        "started_at",
        "heartbeat_at",
        "starts",
        "cancel_requested_at",
        "finished_at",
        "retry_of",
        "events",
    )
    readonly_fields = fields

    # Read-only; the one change is a cancel, through the lifecycle.
    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("workloads.change_task")

    @admin.display(description="events")
    def events(self, task: Task) -> SafeString:
        url = reverse("admin:live_event_changelist") + f"?q={task.pk}"
        return format_html('<a href="{}">This task\'s events</a>', url)

    @admin.action(description="Cancel selected tasks (as their owners would)", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        """A queued task ends at once; a running one is asked to stop and its
        worker ends it, with the same events the owner's cancel sends."""
        changed = services.cancel_active(queryset)
        for task in changed:
            self.log_change(request, task, "Cancelled from the admin.")
        cancelled = sum(task.status == TaskStatus.CANCELLED for task in changed)
        asked = len(changed) - cancelled
        if cancelled or asked:
            self.message_user(
                request,
                f"{cancelled} queued task(s) cancelled; {asked} running task(s) asked to stop.",
                messages.SUCCESS,
            )
        else:
            self.message_user(request, "No selected task was queued or running.", messages.WARNING)
