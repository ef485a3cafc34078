from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from live.services import last_event_id

from .models import Task
from .registry import all_workloads

RECENT_TASKS_ON_PAGE = 20
# The page shows a task's parameters in one line, and at most 500 characters
# of them in its tooltip (static/tasklight/app.js, renderRow): a longer string
# is cut here, with an ellipsis, and shows the same. A text_stats text of
# 1 MiB made each such task a megabyte of HTML: 20 MB for a page of them,
# ~1 s to render on the server and ~1.4 s to load in Chromium (docs/benchmarks.md,
# "Large tasks"). The API and the events carry the whole value.
PAGE_TEXT_CHARS = 500


def _shown(value: Any) -> Any:
    """``value`` with every string longer than PAGE_TEXT_CHARS cut to it."""
    if isinstance(value, str):
        return value if len(value) <= PAGE_TEXT_CHARS else value[: PAGE_TEXT_CHARS - 1] + "\u2026"
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


def _on_page(task: Task) -> dict[str, Any]:
    """A task as the page's script first draws it: its JSON, long parameters cut."""
    shown = task.as_json()
    shown["params"] = _shown(shown["params"])
    return shown


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "home.html", {"workloads": all_workloads()})
    # The event id is read before the tasks: the page reflects at least that
    # event, and its socket resumes from it, so nothing slips in between.
    event_id = last_event_id(request.user.pk)
    # One more than shown: whether "Show older tasks" has any to show.
    tasks = [_on_page(task) for task in Task.objects.filter(owner=request.user)[: RECENT_TASKS_ON_PAGE + 1]]
    return render(
        request,
        "home.html",
        {
            "last_event_id": event_id,
            "tasks": tasks[:RECENT_TASKS_ON_PAGE],
            "has_older_tasks": len(tasks) > RECENT_TASKS_ON_PAGE,
            "workload_schemas": [workload.describe() for workload in all_workloads()],
        },
    )
