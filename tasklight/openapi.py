"""The OpenAPI schema's views, and the error answers it documents."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
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

ERROR_REF = {"$ref": "#/components/schemas/Error"}


def error(description: str) -> OpenApiResponse:
    """An error answer only some operations give (409, 410, 422, 429), declared
    on the view: ``responses={409: error("...")}``."""
    return OpenApiResponse(response=ERROR_REF, description=description)


RATE_LIMITED = error("Too many requests; Retry-After says how many seconds to wait.")

# Seconds, as DRF's throttling and tasklight.errors send it on 429 and 503.
RETRY_AFTER = {"schema": {"type": "integer", "minimum": 0}, "description": "Seconds to wait before trying again."}
SAFE_METHODS = {"get", "head", "options"}


def common_errors(path: str, method: str, operation: dict[str, Any]) -> dict[str, str]:
    """What any operation may answer, from what the middleware and DRF do
    before and around the view (the body limit, content negotiation, the
    authentication and CSRF checks, a dependency down)."""
    errors = {
        "400": "Bad input: malformed JSON, a bad field, parameter or header.",
        "404": "No such task, or not yours." if "{" in path else "Not found (an unknown ?format=).",
        "406": "The Accept header names no type this answers in (JSON).",
        "413": "The body is larger than the limit.",
        "503": "A dependency (the database, the cache) is unavailable; try again after Retry-After.",
    }
    # An empty requirement ({}) makes signing in optional; none at all, impossible.
    requirements = operation.get("security", [])
    if any(requirements):
        optional = {} in requirements
        errors["401"] = "A bad token." if optional else "Not signed in, or a bad token."
        if method not in SAFE_METHODS and any("cookieAuth" in requirement for requirement in requirements):
            errors["403"] = "Signed in by the session cookie, without its CSRF token (X-CSRFToken)."
    return errors


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """A postprocessing hook: the Error component, every operation's common
    errors, and Retry-After on its 429 and 503."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, description in common_errors(path, method, operation).items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
                )
            for status in ("429", "503"):
                if status in responses:
                    responses[status].setdefault("headers", {})["Retry-After"] = RETRY_AFTER
            operation["responses"] = dict(sorted(responses.items()))
    return result
