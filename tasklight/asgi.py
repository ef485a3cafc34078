"""ASGI entry point: `uvicorn tasklight.asgi:application`."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")
# Tells the settings this is a web process (its database connections are pooled).
os.environ.setdefault("TASKLIGHT_PROCESS", "web")
# Django must be set up before anything imports models.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from live.auth import BrowserOriginValidator, WebSocketAuthMiddleware  # noqa: E402
from live.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": BrowserOriginValidator(WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns))),  # type: ignore[arg-type]
    }
)
