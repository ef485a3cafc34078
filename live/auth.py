"""Who may open /ws/: a token header (scripts) or the session cookie (browsers).

A handshake with an ``Authorization: Token …`` header is authenticated by the
token alone, cookies ignored, as in the REST API. A handshake with no Origin
header comes from a non-browser client and is accepted only with a token: a
browser always sends Origin, so a cookie without one proves nothing. A
handshake whose Origin is not in ALLOWED_HOSTS is refused outright.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from accounts.authentication import CachedTokenAuthentication


class BrowserOriginValidator(OriginValidator):
    """Refuses foreign Origins; lets a missing Origin through to token auth."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, settings.ALLOWED_HOSTS)

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


@database_sync_to_async
def user_for_token(header: bytes) -> Any:
    """The token's user, as the REST API finds it (cached, revocation at once)."""
    scheme, _, key = header.decode("latin1").strip().partition(" ")
    if scheme.lower() != "token" or not key.strip():
        return AnonymousUser()
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(key.strip())
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class WebSocketAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner: Any = inner
        self.session_auth: Any = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        authorization = headers.get(b"authorization")
        if authorization is not None:
            return await self.inner({**scope, "user": await user_for_token(authorization)}, receive, send)
        if b"origin" not in headers:
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        return await self.session_auth(scope, receive, send)
