"""Django's HTTP handler for ASGI: one thread crossing per request, on a
reused thread.

Django's own ``ASGIHandler`` is built for async views. Every view and
middleware here is sync, and under it a request crossed between the event
loop and a thread five times: the ``request_started`` signal, the sync
middleware, back to the loop (``async_to_sync`` of Django's async inner
handler), the view, and closing the response (``request_finished``). Each
crossing is a future, a thread wake-up and a GIL hand-over; under load they
were about half of the web process's CPU (docs/benchmarks.md).

This handler does what Django's WSGI handler does, in one ``sync_to_async``
call: the ``request_started`` signal, building the request, the sync
middleware chain (the one WSGI servers use) and the view, and, for a response
whose body is already in memory, closing it (``request_finished``: the
database connection goes back to the pool) before it is sent. A streaming
response (a static file) is closed after it is sent, in the same thread.
Reading the body and sending the response stay Django's, on the event loop.

Django also starts a thread per request (a ``ThreadSensitiveContext``), so
every per-thread cache started cold: Django's database wrapper, and Celery's
result-backend object, which Celery rebuilds by import lookups on each new
thread. Here each request borrows a single-thread executor from a free list
and gives it back, through asgiref's ``ThreadSensitiveContext(executor=...)``:
still one request per thread at a time, all its sync work in that thread, so
database connections and transactions behave as under Django's handler.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from contextvars import ContextVar
from typing import IO, Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

# Idle request threads kept for reuse; a burst above this starts more, which
# are shut down when it ends.
IDLE_THREADS_KEPT = 64

# Callbacks to run once the current request's response has been sent.
_after_response: ContextVar[list[Callable[[], None]] | None] = ContextVar("tasklight_after_response", default=None)


def call_after_response(callback: Callable[[], None]) -> None:
    """Runs ``callback`` once the response to the request being handled has
    been sent (in the request's thread), or at once outside such a request.
    What a response's cookie must reach the browser before: a log-in as
    another user closes the first user's sockets, whose pages reload at
    once; reloading with the old cookie, before the new one arrived, signed
    the browser out again (the anonymous page deletes the cookie)."""
    pending = _after_response.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


class BodyRead:
    """Django reads a request's whole body before any middleware runs, and
    takes its size from Content-Length alone. Through this ``receive`` it
    stops one chunk past API_MAX_BODY_BYTES (the rest is never read), and the
    request then says how much came: a Content-Length of that size, where the
    client sent none (a chunked body, which DRF took for an empty one) or the
    body was cut short. BodySizeLimitMiddleware answers 413 from it."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self.size = 0
        self.cut_short = False

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > settings.API_MAX_BODY_BYTES and message.get("more_body", False):
                self.cut_short = True
                message = {**message, "more_body": False}
        return message

    def with_content_length(self, scope: dict[str, Any]) -> dict[str, Any]:
        headers = scope.get("headers", [])
        if not self.cut_short and (self.size == 0 or any(name == b"content-length" for name, _ in headers)):
            return scope
        headers = [(name, value) for name, value in headers if name != b"content-length"]
        return {**scope, "headers": [*headers, (b"content-length", str(self.size).encode())]}


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        read = BodyRead(receive)
        try:
            body_file = await self.read_body(read.receive)
        except RequestAborted:
            return
        scope = read.with_content_length(scope)
        pending: list[Callable[[], None]] = []
        token = _after_response.set(pending)  # the request's thread sees the same list
        try:
            with closing(body_file):
                set_script_prefix(get_script_prefix(scope))
                response = await sync_to_async(self.respond, thread_sensitive=True)(scope, body_file)
                await self.send_response(response, send)
                if response.streaming:
                    await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            _after_response.reset(token)
            if pending:
                await sync_to_async(_run_all, thread_sensitive=True)(pending)

    def respond(self, scope: dict[str, Any], body_file: IO[bytes]) -> HttpResponseBase:
        """In the request's thread, what Django's WSGI handler does."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if error_response is not None:
            response: HttpResponseBase = error_response
        else:
            assert request is not None
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]  # as Django's run_get_response
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()  # request_finished; the body is in memory already
        return response
