"""Django's HTTP handler for ASGI, entering the request's thread once.

Django's own ``ASGIHandler`` builds an async middleware chain. Every view and
middleware here is sync, so a request used to go event loop -> thread (the
sync middleware) -> event loop (``async_to_sync`` of Django's async inner
handler) -> thread again (the view), and back up the same way. This handler
builds the sync chain that WSGI servers use and runs it, the view included,
in one ``sync_to_async`` call: one crossing each way instead of three, in the
same per-request thread Django would use (``thread_sensitive``), so database
connections and transactions behave exactly as before. Reading the body,
the request signals and sending the response stay Django's.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)
