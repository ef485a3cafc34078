from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import is_valid_path, resolve

from . import logs
from .addresses import is_loopback
from .errors import down_code, error_body, not_found, unavailable_page

logger = logging.getLogger(__name__)


class RequestIdASGIMiddleware:
    """Gives each HTTP request and WebSocket its id (``RequestIdMiddleware``
    below) around the whole ASGI call, where uvicorn writes its access line
    for the request (``uvicorn.access``, as the response starts) and for a
    socket's handshake (``uvicorn.error``): through the context, those lines
    carry the id too. A socket's every line while it is open carries its
    handshake's id, and the handshake's answer echoes it in ``X-Request-ID``
    as an HTTP response does (Django's middleware adds that one)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        # As Django reads it: repeated headers joined by commas (then not a sane id).
        sent = b",".join(value for name, value in scope.get("headers", ()) if name == b"x-request-id")
        request_id = logs.request_id_from(sent.decode("latin-1"))
        token = logs.request_id.set(request_id)
        try:
            if scope["type"] == "websocket":
                send = _echoing_in_the_handshake(scope, send, (b"x-request-id", request_id.encode("latin-1")))
            await self.app(scope, receive, send)
        finally:
            logs.request_id.reset(token)


def _echoing_in_the_handshake(scope: dict[str, Any], send: Any, header: tuple[bytes, bytes]) -> Any:
    """A socket's ``send`` that adds ``header`` to the handshake's answer: the
    accept's headers; for a refusal (a close before the accept, which the
    server answers with a bare 403), the same 403 as an HTTP response that
    carries it, where the server offers ASGI's websocket.http.response
    extension (uvicorn does). Frames after the handshake pass straight on."""
    can_answer_in_http = "websocket.http.response" in (scope.get("extensions") or {})
    answered = False

    async def answer(message: dict[str, Any]) -> None:
        nonlocal answered
        kind = message["type"]
        if kind in ("websocket.accept", "websocket.http.response.start"):
            answered = True
            message = {**message, "headers": [*message.get("headers", ()), header]}
        elif kind == "websocket.close":
            answered = True
            if can_answer_in_http:
                await send({"type": "websocket.http.response.start", "status": 403, "headers": [header]})
                return await send({"type": "websocket.http.response.body", "body": b""})
        await send(message)
        return None

    def echoing_send(message: dict[str, Any]) -> Any:
        # Not a coroutine of its own: after the handshake, a frame costs one call more, not one await.
        return send(message) if answered else answer(message)

    return echoing_send


class LoopbackOnlyWhileDebugASGIMiddleware:
    """With DEBUG on, answers this machine's own clients only: Django's DEBUG
    pages show tracebacks and settings (a Host outside ALLOWED_HOSTS gets one
    too), and embedded mode turns DEBUG on by itself. ``make run`` refuses a
    HOST beyond loopback while DEBUG is on (tasklight/make_run.py), but the
    Procfile's web line binds 0.0.0.0 and a web process cannot see the
    address uvicorn was given: it looks at each client instead. Any other
    client gets a plain 403 saying why (a socket's handshake, a 403 too).

    The client is the one uvicorn names: behind a proxy it trusts
    (FORWARDED_ALLOW_IPS, 127.0.0.1 by default), the proxy's client, so a
    proxy on this machine does not open the DEBUG pages to its own clients.
    A client with no address (a Unix socket) is on this machine. Installed
    only while DEBUG is on (tasklight/asgi.py): production pays nothing."""

    REFUSAL = (
        b"DEBUG is on: this server answers this machine's own (loopback) clients only. "
        b"To serve other machines, set DEBUG=0 with SECRET_KEY, ALLOWED_HOSTS and HTTPS "
        b"(docs/operations.md#debug-is-for-this-machine-only).\n"
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client")
        if scope["type"] not in ("http", "websocket") or not client or is_loopback(str(client[0])):
            return await self.app(scope, receive, send)
        logger.warning(
            "debug_loopback_only: refused %s %s from %s: DEBUG is on, only this machine's own clients are answered",
            "WebSocket" if scope["type"] == "websocket" else scope.get("method", ""),
            scope.get("path", ""),
            client[0],
        )
        if scope["type"] == "websocket":
            if (await receive())["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})  # before the accept: a 403
            return None
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(self.REFUSAL))]
        if (request_id := logs.request_id.get()) is not None:
            headers.append((b"x-request-id", request_id.encode("latin-1")))
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": self.REFUSAL})
        return None


class RequestIdMiddleware:
    """Gives each request an id: the caller's ``X-Request-ID`` when it is a
    sane one (a proxy's, say), else a new one; under ASGI, the one
    ``RequestIdASGIMiddleware`` gave it already. Every log line written while
    handling the request carries it, and the response echoes it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = logs.request_id.get() or logs.request_id_from(request.headers.get("X-Request-ID"))
        # Also on the request: Django logs a 4xx/5xx after this returns.
        request.META[logs.REQUEST_ID_META_KEY] = request_id
        token = logs.request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            logs.request_id.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ProbeMiddleware:
    """``/healthz``, ``/readyz`` and ``/metrics`` answer whoever asks them
    directly: a load balancer's or Kubernetes' probe and Prometheus come to a
    process by its address, not by the public host name, and over plain
    HTTP. Below this, Django refuses a Host outside ALLOWED_HOSTS (400, and
    an ERROR line per probe) and HTTPS redirects to https (a 301, which
    many probes count as healthy, whatever the process's state). None of
    the three builds a URL from the Host; /metrics keeps its bearer token.
    Placed below SecurityMiddleware (SECURE_REDIRECT_EXEMPT names the three):
    their answers keep the security headers. The paths are settings'
    PROBE_PATHS; their views, the URL conf's."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.probes: dict[str, Callable[[HttpRequest], HttpResponse]] = {
            f"/{path}": resolve(f"/{path}").func for path in settings.PROBE_PATHS
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = self.probes.get(request.path_info)
        return probe(request) if probe is not None else self.get_response(request)


class ApiPathMiddleware:
    """``/api/tasks`` is served as ``/api/tasks/``. Django's APPEND_SLASH
    would redirect it with a 301, which clients follow with a GET: a POST
    that queues nothing and answers 200 with the list (with DEBUG on, a 500
    for a POST). Pages keep the redirect. And with DEBUG on (make run), an
    unknown /api/ path is a JSON 404 as in production, not Django's page."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        slashless = path.startswith("/api/") and not path.endswith("/")
        if slashless and not is_valid_path(path) and is_valid_path(f"{path}/"):
            request.path_info = f"{path}/"
            request.path = f"{request.path}/"
        response = self.get_response(request)
        if response.status_code == 404 and settings.DEBUG and path.startswith("/api/") and _is_html(response):
            return not_found(request, Http404())  # what handler404 answers with DEBUG off
        return response


def _is_html(response: HttpResponse) -> bool:
    return str(response.get("Content-Type", "")).startswith("text/html")


class BodySizeLimitMiddleware:
    """Answers 413 before reading a body larger than ``API_MAX_BODY_BYTES``.

    Django's own DATA_UPLOAD_MAX_MEMORY_SIZE answers 400, and DRF reads the
    stream without checking it; a client deserves the honest status.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse(error_body("invalid", "Content-Length is not a number."), status=400)
        if length > settings.API_MAX_BODY_BYTES:
            return JsonResponse(
                error_body("too_large", f"The body is larger than {settings.API_MAX_BODY_BYTES} bytes."),
                status=413,
            )
        return self.get_response(request)


class DependencyUnavailableMiddleware:
    """A page whose view needs PostgreSQL or Redis (the log-in and sign-up
    limits) while it is unreachable: a 503 page with ``Retry-After``, not a
    500. The API says the same in JSON (tasklight.errors.api_exception_handler).
    What a middleware raises reaches no process_exception: handler500
    (tasklight.errors.server_error) answers the same page for it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        code = down_code(exception)
        if code is None:
            return None
        return unavailable_page(request, code, exception)
