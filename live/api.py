from __future__ import annotations

from typing import Any, get_args

from django.urls import reverse
from django.utils.http import urlencode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasklight.openapi import error
from tasklight.pagination import limit_schema, page_size, whole_number
from workloads.api import TaskSerializer

from . import services
from .events import EventKind
from .models import Event


class EventSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField(min_value=1)
    event = serializers.ChoiceField(choices=get_args(EventKind))
    task = TaskSerializer()
    created_at = serializers.DateTimeField()


class EventPageSerializer(serializers.Serializer[Any]):
    results = EventSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class EventListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0, "default": 0},
                description=(
                    "Only events with a greater id (default 0). The newest event's id answers an empty page; "
                    "an id beyond it is a 400 (the numbering was reset: reload the tasks, then follow the "
                    "socket from its `hello`), as the socket's `resume` answers `invalid_resume`."
                ),
            ),
            OpenApiParameter("limit", limit_schema(500), description="Page size, 1 to 500 (default 500)."),
        ],
        responses={
            200: EventPageSerializer,
            410: error(
                "`resync`: events after this id are past retention; reload the tasks over REST, then follow the socket."
            ),
        },
    )
    def get(self, request: Request) -> Response:
        after = whole_number(request.query_params.get("after", "0"))
        if after is None:
            raise ValidationError({"after": ["Must be a non-negative whole number."]})
        limit = page_size(request, default=500)
        user_id: int = request.user.pk  # type: ignore[assignment]  # IsAuthenticated
        try:
            events = services.events_after(user_id=user_id, after=after, limit=limit)
        except services.CursorExpired:
            raise CursorGone from None
        except services.CursorAhead as ahead:
            raise ValidationError({"after": [str(ahead)]}) from None
        next_url = None
        if len(events) == limit:
            query = urlencode({"after": events[-1].sequence, "limit": limit})
            next_url = request.build_absolute_uri(f"{reverse('api-events')}?{query}")
        return Response({"results": [event_json(e) for e in events], "next": next_url})


def event_json(event: Event) -> dict[str, Any]:
    return {"id": event.sequence, "event": event.kind, "task": event.task, "created_at": event.created_at.isoformat()}


class CursorGone(APIException):
    status_code = status.HTTP_410_GONE
    default_code = "resync"
    default_detail = "Events after this id are past retention: reload the tasks over REST, then follow the socket."


class InboxSerializer(serializers.Serializer[Any]):
    unread = serializers.IntegerField(
        min_value=0, max_value=services.UNREAD_COUNT_CAP, help_text=f"Counted up to {services.UNREAD_COUNT_CAP}."
    )
    read_up_to = serializers.IntegerField(min_value=0)
    last_event_id = serializers.IntegerField(
        min_value=0,
        help_text="The newest event id `unread` covers: notifications after it are not in the count.",
    )


class NotificationPageSerializer(InboxSerializer):
    results = EventSerializer(many=True)


class MarkReadSerializer(serializers.Serializer[Any]):
    up_to = serializers.IntegerField(min_value=0, help_text="Marks every notification with an id up to this read.")


class NotificationListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("limit", limit_schema(10), description="How many, 1 to 500 (default 10).")],
        responses={200: NotificationPageSerializer},
    )
    def get(self, request: Request) -> Response:
        """The inbox: terminal task events, newest first, and the unread count."""
        user_id: int = request.user.pk  # type: ignore[assignment]  # IsAuthenticated
        limit = page_size(request, default=10)
        return Response(
            {
                **services.inbox_state(user_id),
                "results": [event_json(e) for e in services.notifications(user_id=user_id, limit=limit)],
            }
        )


class MarkReadView(APIView):
    @extend_schema(request=MarkReadSerializer, responses={200: InboxSerializer})
    def post(self, request: Request) -> Response:
        """Marks notifications read; every socket of the user hears of it."""
        body = MarkReadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        user_id: int = request.user.pk  # type: ignore[assignment]  # IsAuthenticated
        return Response(services.mark_read(user_id=user_id, up_to=body.validated_data["up_to"]))
