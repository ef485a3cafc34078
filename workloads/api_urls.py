from django.urls import path

from . import api

urlpatterns = [
    path("tasks/", api.TaskListView.as_view(), name="api-tasks"),
    path("tasks/<uuid:task_id>/", api.TaskDetailView.as_view(), name="api-task-detail"),
    path("tasks/<uuid:task_id>/cancel/", api.TaskCancelView.as_view(), name="api-task-cancel"),
    path("tasks/<uuid:task_id>/retry/", api.TaskRetryView.as_view(), name="api-task-retry"),
    path("workloads/", api.WorkloadListView.as_view(), name="api-workloads"),
]
