"""Who may open /ws/: a token header (scripts) or the session cookie (browsers).

A handshake with an ``Authorization: Token …`` header is authenticated by the
token alone, cookies ignored, as in the REST API. A handshake with no Origin
header comes from a non-browser client and is accepted only with a token: a
browser always sends Origin, so a cookie without one proves nothing. A
handshake whose Origin is not this site's own (or a trusted one) is refused
outright, token or not.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from rest_framework.exceptions import AuthenticationFailed

from accounts.authentication import CachedTokenAuthentication
from tasklight.db import DATABASE_DOWN

from .consumers import CLOSE_TRY_AGAIN

logger = logging.getLogger(__name__)


class BrowserOriginValidator:
    """Refuses foreign Origins; lets a missing Origin through to token auth.

    An Origin is this site's own, as Django's CSRF check has it for a POST:
    the scheme (http for ws, https for wss), host and port the browser
    connected to, that host in ALLOWED_HOSTS; or one of CSRF_TRUSTED_ORIGINS.
    Channels' OriginValidator matched the host name alone, so a page on
    another port or scheme of the same host (another app, a dev server, http
    beside https) could open a signed-in user's socket and read their events."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin")
        if origin is not None and not self.is_own(origin, headers, secure=self.is_secure(scope, headers)):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)

    @staticmethod
    def is_secure(scope: Any, headers: dict[bytes, bytes]) -> bool:
        """As Django's request.is_secure(): wss, or the TLS proxy's header
        named by SECURE_PROXY_SSL_HEADER (uvicorn sets wss from it only for
        the proxies in FORWARDED_ALLOW_IPS; Django believes it from any)."""
        if scope.get("scheme") == "wss":
            return True
        if not settings.SECURE_PROXY_SSL_HEADER:
            return False
        name, value = settings.SECURE_PROXY_SSL_HEADER
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        return headers.get(header, b"").decode("latin1").split(",")[0].strip() == value

    @staticmethod
    def is_own(origin: bytes, headers: dict[bytes, bytes], *, secure: bool) -> bool:
        origin_text = origin.decode("latin1").strip().lower()
        if origin_text in {trusted.lower() for trusted in settings.CSRF_TRUSTED_ORIGINS}:
            return True
        host = headers.get(b"host", b"").decode("latin1").strip().lower()
        domain, _port = split_domain_port(host)
        own = f"{'https' if secure else 'http'}://{host}"
        return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS) and origin_text == own


def token_key(header: bytes) -> str | None:
    """The key of an ``Authorization: Token <key>`` header; None for any other."""
    scheme, _, key = header.decode("latin1").strip().partition(" ")
    if scheme.lower() != "token" or not key.strip():
        return None
    return key.strip()


@database_sync_to_async
def user_for_token(key: str | None) -> Any:
    """The token's user, as the REST API finds it (cached, revocation at once)."""
    if key is None:
        return AnonymousUser()
    try:
        user, _token = CachedTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class SessionUserMiddleware(AuthMiddleware):
    """Channels' AuthMiddleware: the session's user in the scope. A database
    that does not answer meanwhile is not an error of the client's: the
    socket is accepted and closed with 1013 (try again later), as a
    ``hello`` that cannot be read is (live/consumers.py); uvicorn answered
    the handshake with a 500."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        self.populate_scope(scope)
        try:
            await self.resolve_scope(scope)
        except DATABASE_DOWN as exc:
            return await try_again_later(exc, receive, send)
        inner: Any = self.inner
        return await inner(scope, receive, send)


async def try_again_later(exc: Exception, receive: Any, send: Any) -> None:
    logger.warning("socket refused for now, the database is unavailable: %s", exc)
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN})


class WebSocketAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner: Any = inner
        self.session_auth: Any = CookieMiddleware(SessionMiddleware(SessionUserMiddleware(inner)))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers", []))
        authorization = headers.get(b"authorization")
        if authorization is not None:
            key = token_key(authorization)
            try:
                user = await user_for_token(key)
            except DATABASE_DOWN as exc:
                return await try_again_later(exc, receive, send)
            # The key stays with the socket, which checks it again (live/consumers.py).
            return await self.inner({**scope, "user": user, "token_key": key}, receive, send)
        if b"origin" not in headers:
            return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
        return await self.session_auth(scope, receive, send)
