"""The OpenAPI schema's views, and the error answers it documents."""

from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class JsonErrors(APIView):
    """The schema answers in YAML or OpenAPI's JSON types and the docs page in
    HTML; their own errors (405 for another method, 406 for an Accept they
    cannot answer, 404 for an unknown ``?format=``, 401 for a bad token) are
    JSON like every other endpoint's (DESIGN.md §4), not rendered in those."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and getattr(response, "exception", False):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


class SchemaView(JsonErrors, SpectacularAPIView):
    pass


class DocsView(JsonErrors, SpectacularSwaggerView):
    pass


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
            },
        }
    },
}

EVERY_OPERATION = {
    "400": "Bad input: malformed JSON, a bad field or parameter.",
    "401": "Not signed in, or a bad token.",
    "403": "Forbidden: a session request without its CSRF token.",
    "404": "Not found, or not yours.",
    "413": "The body is larger than the limit.",
    "429": "Too many requests; see Retry-After.",
    "503": "A dependency (the database) is unavailable; try again.",
}
STATE_CHANGES = {
    "409": "The task's state forbids this.",
    "422": "The Idempotency-Key was used with a different request.",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            answers = {**EVERY_OPERATION, **(STATE_CHANGES if method == "post" else {})}
            for status, description in answers.items():
                operation["responses"].setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
