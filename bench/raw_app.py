"""The raw channel-layer path's server: a minimal ``AsyncJsonWebsocketConsumer``
in a tiny ASGI app of its own, no Tasklight code, the same layer class and
options as Tasklight's (``RedisPubSubChannelLayer``).

    BENCH_RAW_PREFIX=p uvicorn bench.raw_app:application --lifespan off

Every socket on ``/raw/`` joins one group and forwards what is sent to it.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings

REDIS_URL = os.environ.get("BENCH_RAW_REDIS", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_RAW_PREFIX", "tasklight-bench-raw")
GROUP = "bench-raw"


def layer_config() -> dict[str, Any]:
    return {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "max_connections": 1000}], "prefix": PREFIX},
    }


if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-raw",  # noqa: S106  # nothing here is signed
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": layer_config()},
        ROOT_URLCONF=__name__,
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

urlpatterns: list[Any] = []


class RawConsumer(AsyncJsonWebsocketConsumer):
    groups = [GROUP]  # joined on connect, left on disconnect

    async def raw_message(self, message: dict[str, Any]) -> None:
        await self.send_json(message["frame"])


routes: list[Any] = [path("raw/", RawConsumer.as_asgi())]  # type: ignore[arg-type]
application = ProtocolTypeRouter({"websocket": URLRouter(routes)})
