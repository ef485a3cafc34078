from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from live.services import last_event_id

from .models import Task
from .registry import all_workloads

RECENT_TASKS_ON_PAGE = 20


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "home.html", {"workloads": all_workloads()})
    # The event id is read before the tasks: the page reflects at least that
    # event, and its socket resumes from it, so nothing slips in between.
    event_id = last_event_id(request.user.pk)
    # One more than shown: whether "Show older tasks" has any to show.
    tasks = [task.as_json() for task in Task.objects.filter(owner=request.user)[: RECENT_TASKS_ON_PAGE + 1]]
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
