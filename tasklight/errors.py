"""One JSON error shape for the whole API: ``{"error": {code, message, fields?}}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from tasklight import logs
from tasklight.db import DATABASE_DOWN

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten(detail: Any) -> Any:
    """DRF's ErrorDetail lists become plain lists of strings."""
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


# The shared cache (rate limits, log-in failure counts, the token cache's
# invalidation) unreachable. Its callers change nothing before it answers, or
# roll back (revoking a token), so a retry is safe; the database alone cannot
# stand in for it without one web process forgetting a limit or a revocation
# that the others keep.
CACHE_DOWN = (RedisConnectionError, RedisTimeoutError)
RETRY_AFTER_SECONDS = "5"


def dependency_down(request: HttpRequest, code: str) -> None:
    """Marks ``request`` as answered 503 ``code`` for a dependency that is
    down: Django's line for it is then a WARNING a minute, not an ERROR each
    (tasklight.logs.DependencyDownFilter)."""
    request.META[logs.DEPENDENCY_DOWN_META_KEY] = code


def _unavailable(code: str, message: str, exc: Exception, request: Any) -> Response:
    """A dependency down or unreachable: a 503 with a retry hint, not a bug."""
    logger.warning("%s: %s", code, exc)
    if request is not None:
        dependency_down(request, code)  # DRF's request passes META on from Django's
    return Response(
        error_body(code, message),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DATABASE_DOWN):
        return _unavailable(
            "database_unavailable", "The database is unavailable; try again shortly.", exc, context.get("request")
        )
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(exc, CACHE_DOWN):
        return _unavailable(
            "cache_unavailable",
            "A service Tasklight depends on is unavailable; try again shortly.",
            exc,
            context.get("request"),
        )
    # DRF turns these two into its own exceptions inside exception_handler;
    # doing it first lets the code below see one kind of exception.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail) if isinstance(exc.detail, dict) else None
        messages = _flatten(exc.detail) if isinstance(exc.detail, list) else None
        message = messages[0] if messages else "The request is not valid."
        response.data = error_body("invalid", message, fields)
    elif isinstance(exc, exceptions.APIException):
        if isinstance(exc, exceptions.UnsupportedMediaType):
            response.status_code = 400  # DESIGN.md §4: every bad request but a body too large
        code = exc.get_codes()
        response.data = error_body(code if isinstance(code, str) else "error", str(exc.detail))
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """JSON under /api/, Django's page everywhere else."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return defaults.server_error(request)
