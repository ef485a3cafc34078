"""JSON API for tasks and workloads (DESIGN.md §4)."""

from __future__ import annotations

import uuid
from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasklight.pagination import page_size

from . import services
from .models import Task, TaskStatus
from .registry import InvalidParams, UnknownWorkload, all_workloads


class TaskSerializer(serializers.Serializer[Task]):
    """Documents the shape of ``Task.as_json()``, which is what is sent."""

    id = serializers.UUIDField()
    kind = serializers.CharField()
    params = serializers.JSONField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    progress = serializers.IntegerField(min_value=0, max_value=100, allow_null=True)
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class TaskPageSerializer(serializers.Serializer[Any]):
    results = TaskSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class NewTaskSerializer(serializers.Serializer[dict[str, Any]]):
    kind = serializers.CharField(max_length=64, help_text="A workload name from GET /api/workloads/.")
    params = serializers.JSONField(default=dict, help_text="The workload's parameters (its JSON Schema).")


class WorkloadSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    params = serializers.JSONField(help_text="JSON Schema of the parameters.")


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    cursor_query_param = "cursor"

    def get_page_size(self, request: Request) -> int:
        return page_size(request, default=20)

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except Exception:
            raise ValidationError({"cursor": ["The cursor is not valid."]}) from None

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})


class TaskListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description="Page size, 1 to 500 (default 20)."),
            OpenApiParameter("cursor", str, description="From a previous page's `next`."),
        ],
        responses={200: TaskPageSerializer},
    )
    def get(self, request: Request) -> Response:
        paginator = NewestFirst()
        page = paginator.paginate_queryset(Task.objects.filter(owner_id=request.user.pk), request, view=self)
        return paginator.get_paginated_response([task.as_json() for task in page or []])

    @extend_schema(request=NewTaskSerializer, responses={202: TaskSerializer})
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError("The body must be a JSON object.")
        body = NewTaskSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        kind, params = body.validated_data["kind"], body.validated_data["params"]
        try:
            task = services.create_task(owner=request.user, kind=kind, params=params)  # type: ignore[arg-type]  # IsAuthenticated
        except UnknownWorkload:
            raise ValidationError({"kind": [f"There is no workload named {kind!r}."]}) from None
        except InvalidParams as exc:
            raise ValidationError(
                {f"params.{name}" if name != "params" else name: messages for name, messages in exc.fields.items()}
            ) from None
        location = reverse("api-task-detail", kwargs={"task_id": task.id})
        return Response(task.as_json(), status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class TaskDetailView(APIView):
    @extend_schema(responses={200: TaskSerializer})
    def get(self, request: Request, task_id: uuid.UUID) -> Response:
        # Another user's task is a 404, never a 403: its existence stays hidden.
        task = get_object_or_404(Task, pk=task_id, owner_id=request.user.pk)
        return Response(task.as_json())


class WorkloadListView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: WorkloadSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response([workload.describe() for workload in all_workloads()])
