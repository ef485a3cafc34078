import uuid

from django.urls import path, register_converter

from . import api


class TaskIdConverter:
    """A task's UUID in any letter case (Django's ``uuid`` takes lower case only)."""

    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_url(self, value: uuid.UUID | str) -> str:
        return str(value)


register_converter(TaskIdConverter, "task_id")

urlpatterns = [
    path("tasks/", api.TaskListView.as_view(), name="api-tasks"),
    path("tasks/<task_id:task_id>/", api.TaskDetailView.as_view(), name="api-task-detail"),
    path("tasks/<task_id:task_id>/cancel/", api.TaskCancelView.as_view(), name="api-task-cancel"),
    path("tasks/<task_id:task_id>/retry/", api.TaskRetryView.as_view(), name="api-task-retry"),
    path("workloads/", api.WorkloadListView.as_view(), name="api-workloads"),
]
