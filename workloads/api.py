"""JSON API for tasks and workloads (DESIGN.md §4)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, AuthenticationFailed, NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from tasklight import rate_limits
from tasklight.fields import JSONObjectField, StrictCharField
from tasklight.openapi import RATE_LIMITED, error
from tasklight.pagination import limit_schema, page_size

from . import services
from .models import TASK_JSON_FIELDS, Task, TaskStatus, task_json
from .registry import InvalidParams, UnknownWorkload, all_workloads


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The task's state forbids this."


class UnprocessableEntity(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_mismatch"
    default_detail = "The request does not match the one first made with this key."


class TaskSerializer(serializers.Serializer[Task]):
    """Documents the shape of ``Task.as_json()``, which is what is sent."""

    id = serializers.UUIDField()
    kind = serializers.CharField()
    params = JSONObjectField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    progress = serializers.IntegerField(min_value=0, max_value=100)
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(
        allow_null=True,
        max_length=services.MAX_ERROR_LENGTH,
        help_text="Why it failed or was cancelled; a longer message is cut, to end in '… [cut: N characters in all]'.",
    )
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class TaskPageSerializer(serializers.Serializer[Any]):
    results = TaskSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class NewTaskSerializer(serializers.Serializer[dict[str, Any]]):
    kind = StrictCharField(max_length=64, help_text="A workload name from GET /api/workloads/.")
    params = JSONObjectField(default=dict, help_text="The workload's parameters (its JSON Schema).")


class WorkloadSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    params = JSONObjectField(help_text="JSON Schema of the parameters.")


class QueueRateThrottle(BaseThrottle):
    """Per user, on everything that queues a task: TASK_RATE_LIMIT, checked
    and counted atomically (tasklight/rate_limits.py). Permissions run first:
    the user is authenticated."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        self.retry_after = rate_limits.hit("queue", str(request.user.pk), settings.TASK_RATE_LIMIT)
        if self.retry_after is not None and self.repeats_a_request(request):
            self.retry_after = None
        return self.retry_after is None

    @staticmethod
    def repeats_a_request(request: Request) -> bool:
        """A POST whose Idempotency-Key this user already used (within 24 h)
        queues nothing new: it answers the first request's task (or 422), as
        DESIGN §4 says, even past the limit. Looked up only past the limit."""
        key = request.headers.get("Idempotency-Key")
        return (
            request.method == "POST"
            and key is not None
            and IDEMPOTENCY_KEY.match(key) is not None
            and services.idempotency_key_in_use(owner_id=request.user.pk, key=key)  # type: ignore[arg-type]  # IsAuthenticated
        )

    def wait(self) -> float | None:
        return self.retry_after


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# The same rule in the OpenAPI schema (an ECMA-262 pattern).
IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "pattern": "^[!-~]{1,255}$"}
# Where a queued task is: its GET URL.
LOCATION = OpenApiParameter(
    "Location", str, OpenApiParameter.HEADER, response=[202], required=True, description="The new task's URL."
)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ValidationError({"Idempotency-Key": ["1 to 255 visible ASCII characters, no spaces."]})
    return key


def accepted(task: Task) -> Response:
    location = reverse("api-task-detail", kwargs={"task_id": task.id})
    return Response(task.as_json(), status=status.HTTP_202_ACCEPTED, headers={"Location": location})


MAX_UTC_OFFSET = timedelta(hours=15, minutes=59)


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    cursor_query_param = "cursor"

    def get_page_size(self, request: Request) -> int:
        return page_size(request, default=20)

    def decode_cursor(self, request: Request) -> Any:
        """DRF checks the cursor's encoding; its position, a created_at, is
        checked here too, or a forged one fails the query (a 500)."""
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                position = parse_datetime(str(cursor.position))
                # PostgreSQL takes offsets up to 15:59; Python up to 23:59.
                offset = position.utcoffset() if position is not None else None
                if position is None or (offset is not None and abs(offset) > MAX_UTC_OFFSET):
                    raise ValueError(cursor.position)
        except Exception:
            raise ValidationError({"cursor": ["The cursor is not valid."]}) from None
        return cursor

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})


class TaskListView(APIView):
    def get_throttles(self) -> list[BaseThrottle]:
        return [QueueRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", limit_schema(20), description="Page size, 1 to 500 (default 20)."),
            OpenApiParameter(
                "cursor", str, description="Opaque: follow `next`, which carries it, rather than build one."
            ),
        ],
        operation_id="tasks_list",
        responses={200: TaskPageSerializer},
    )
    def get(self, request: Request) -> Response:
        paginator = NewestFirst()
        tasks = Task.objects.filter(owner_id=request.user.pk).values(*TASK_JSON_FIELDS)
        page: list[dict[str, Any]] | None = paginator.paginate_queryset(tasks, request, view=self)
        return paginator.get_paginated_response([task_json(row) for row in page or []])

    @extend_schema(
        request=NewTaskSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                IDEMPOTENCY_KEY_SCHEMA,
                OpenApiParameter.HEADER,
                description="Repeat a POST safely: the same key and body within 24 h return the same task.",
            ),
            LOCATION,
        ],
        responses={
            202: TaskSerializer,
            422: error("This Idempotency-Key was used with a different request in the last 24 hours."),
            429: RATE_LIMITED,
        },
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationError("The body must be a JSON object.")
        body = NewTaskSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        kind, params = body.validated_data["kind"], body.validated_data["params"]
        try:
            task = services.create_task(
                owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated
                kind=kind,
                params=params,
                idempotency_key=idempotency_key(request),
            )
        except services.IdempotencyMismatch:
            raise UnprocessableEntity(
                "This Idempotency-Key was used with a different request in the last 24 hours."
            ) from None
        except UnknownWorkload:
            raise ValidationError({"kind": [f"There is no workload named {kind!r}."]}) from None
        except services.OwnerGone:
            # Deleted while this request ran (its credentials were read before).
            raise AuthenticationFailed("This account no longer exists.") from None
        except InvalidParams as exc:
            raise ValidationError(
                {f"params.{name}" if name != "params" else name: messages for name, messages in exc.fields.items()}
            ) from None
        return accepted(task)


class TaskDetailView(APIView):
    @extend_schema(responses={200: TaskSerializer})
    def get(self, request: Request, task_id: uuid.UUID) -> Response:
        # Another user's task is a 404, never a 403: its existence stays hidden.
        task = get_object_or_404(Task, pk=task_id, owner_id=request.user.pk)
        return Response(task.as_json())


class TaskCancelView(APIView):
    @extend_schema(request=None, responses={202: TaskSerializer, 409: error("The task has finished already.")})
    def post(self, request: Request, task_id: uuid.UUID) -> Response:
        """A queued task is cancelled at once; a running one stops at its next
        cancellation check, or is killed after the grace period."""
        try:
            task = services.cancel_task(task_id=task_id, owner=request.user)  # type: ignore[arg-type]
        except Task.DoesNotExist:
            raise NotFound from None
        except services.TaskConflict as exc:
            raise Conflict(str(exc)) from None
        return Response(task.as_json(), status=status.HTTP_202_ACCEPTED)


class TaskRetryView(APIView):
    throttle_classes = [QueueRateThrottle]

    @extend_schema(
        request=None,
        parameters=[LOCATION],
        responses={
            202: TaskSerializer,
            409: error("The task has not finished, or its workload or parameters are no longer accepted."),
            429: RATE_LIMITED,
        },
    )
    def post(self, request: Request, task_id: uuid.UUID) -> Response:
        """Queues a copy of a finished task (same kind and params) as a new task."""
        try:
            task = services.retry_task(task_id=task_id, owner=request.user)  # type: ignore[arg-type]
        except Task.DoesNotExist:
            raise NotFound from None
        except services.TaskConflict as exc:
            raise Conflict(str(exc)) from None
        except (UnknownWorkload, InvalidParams):
            raise Conflict("This task's workload or parameters are no longer accepted.") from None
        return accepted(task)


class WorkloadListView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses={200: WorkloadSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response([workload.describe() for workload in all_workloads()])
