"""One JSON error shape for the whole API: ``{"error": {code, message, fields?}}``."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template import loader
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
# The API's message for each 503 code.
DOWN_MESSAGES = {
    "database_unavailable": "The database is unavailable; try again shortly.",
    "cache_unavailable": "A service Tasklight depends on is unavailable; try again shortly.",
}


def dependency_down(request: HttpRequest, code: str) -> None:
    """Marks ``request`` as answered 503 ``code`` for a dependency that is
    down: Django's line for it is then a WARNING a minute, not an ERROR each
    (tasklight.logs.DependencyDownFilter)."""
    request.META[logs.DEPENDENCY_DOWN_META_KEY] = code


def down_code(exc: BaseException | None) -> str | None:
    """The 503 code for an error that says a dependency is down, else None."""
    if isinstance(exc, DATABASE_DOWN):
        return "database_unavailable"
    if isinstance(exc, CACHE_DOWN):
        return "cache_unavailable"
    return None


def unavailable_page(request: HttpRequest, code: str, exc: BaseException) -> HttpResponse:
    """The 503 page, with ``Retry-After``, for a page that a dependency being
    down stopped: Tasklight's WARNING naming it, and the request marked so
    that Django's line for it is a WARNING too. With the database down the
    page is rendered without the request's context: the navigation's
    ``user`` would load the session and the user from the database again
    (another wait of the pool's 10 s, then an error in the error page).
    Then who is signed in is unknown, and the navigation offers neither the
    account's links nor "Log in" and "Sign up": a signed-in person was
    offered those, as if signed out."""
    logger.warning("%s: %s", code, exc)
    dependency_down(request, code)
    template = loader.get_template("503.html")
    if code == "database_unavailable":
        body = template.render({"user": None, "account_unknown": True})
    else:
        body = template.render(request=request)
    response = HttpResponse(body, status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def _said_down(request: Any, code: str, exc: BaseException) -> dict[str, Any]:
    """Tasklight's WARNING for a 503 ``code``, the request marked, and the
    API's body for it."""
    logger.warning("%s: %s", code, exc)
    if request is not None:
        dependency_down(request, code)  # DRF's request passes META on from Django's
    return error_body(code, DOWN_MESSAGES[code])


def _unavailable(code: str, exc: Exception, request: Any) -> Response:
    """A dependency down or unreachable: a 503 with a retry hint, not a bug."""
    return Response(
        _said_down(request, code, exc),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    down = down_code(exc)
    if down is not None:
        return _unavailable(down, exc, context.get("request"))
    if isinstance(exc, DatabaseError):
        return None
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
    """Django's handler500: what a view's middleware did not catch. An error
    raised in a middleware (the session's save in SessionMiddleware's
    process_response, a lazy user read by a middleware) reaches no
    process_exception and comes here: one that says PostgreSQL or Redis is
    down is a 503 with ``Retry-After`` (JSON under /api/, the 503 page
    elsewhere), not a 500 with an ERROR traceback."""
    exc = sys.exc_info()[1]
    code = down_code(exc)
    if code is not None and exc is not None:
        if not request.path.startswith("/api/"):
            return unavailable_page(request, code, exc)
        response = JsonResponse(_said_down(request, code, exc), status=503)
        response["Retry-After"] = RETRY_AFTER_SECONDS
        return response
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return defaults.server_error(request)
