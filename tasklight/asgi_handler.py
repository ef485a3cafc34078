"""Django's HTTP handler for ASGI: one thread crossing per request, on a
reused thread.

Django's own ``ASGIHandler`` builds an async middleware chain. Every view and
middleware here is sync, so a request used to go event loop -> thread (the
sync middleware) -> event loop (``async_to_sync`` of Django's async inner
handler) -> thread again (the view), and back up the same way. This handler
builds the sync chain that WSGI servers use and runs it, the view included,
in one ``sync_to_async`` call: one crossing each way instead of three.

Django also gives each request a thread of its own (a ``ThreadSensitiveContext``
per request), started and stopped per request. Every per-thread cache then
starts cold: Django's database wrapper, and Celery's result-backend object,
which Celery rebuilds by import lookups on each new thread. Here each request
borrows a single-thread executor from a free list and gives it back, through
asgiref's own ``ThreadSensitiveContext(executor=...)``: still one request per
thread at a time, and the request's sync work (signals, middleware, view,
closing the response) all in that thread, so database connections and
transactions behave exactly as before. Reading the body and sending the
response stay Django's.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase

# Idle request threads kept for reuse; a burst above this starts more, which
# are shut down when it ends.
IDLE_THREADS_KEPT = 64


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

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
