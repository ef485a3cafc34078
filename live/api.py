from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.http import urlencode
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasklight.pagination import page_size
from workloads.api import TaskSerializer

from . import services


class EventSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    event = serializers.CharField()
    task = TaskSerializer()
    created_at = serializers.DateTimeField()


class EventPageSerializer(serializers.Serializer[Any]):
    results = EventSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class EventListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Only events with a greater id (default 0)."),
            OpenApiParameter("limit", int, description="Page size, 1 to 500 (default 500)."),
        ],
        responses={200: EventPageSerializer},
    )
    def get(self, request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = -1
        if after < 0:
            raise ValidationError({"after": ["Must be a non-negative whole number."]})
        limit = page_size(request, default=500)
        user_id: int = request.user.pk  # type: ignore[assignment]  # IsAuthenticated
        events = services.events_after(user_id=user_id, after=after, limit=limit)
        next_url = None
        if len(events) == limit:
            query = urlencode({"after": events[-1].sequence, "limit": limit})
            next_url = request.build_absolute_uri(f"{reverse('api-events')}?{query}")
        return Response(
            {
                "results": [
                    {"id": e.sequence, "event": e.kind, "task": e.task, "created_at": e.created_at.isoformat()}
                    for e in events
                ],
                "next": next_url,
            }
        )
