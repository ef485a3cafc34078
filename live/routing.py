from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from .consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/", LiveConsumer.as_asgi()),  # type: ignore[arg-type]
    # Any other path is refused at the handshake (403): Channels' router
    # raised for it, and uvicorn answered 500 with an ERROR line (a typo such
    # as /ws, or anyone at all).
    re_path(r"", WebsocketDenier.as_asgi()),  # type: ignore[arg-type]
]
