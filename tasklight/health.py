"""Liveness and readiness: what the About page and /readyz report."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from .celery import app as celery_app

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class PartStatus:
    name: str
    backend: str
    ok: bool
    detail: str = ""


def _describe(url: str) -> str:
    """The scheme and host of a URL, never its credentials."""
    scheme, _, rest = url.partition("://")
    host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
    return f"{scheme}://{host}" if host else f"{scheme}://"


def check_database() -> PartStatus:
    backend = connection.vendor
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return PartStatus("database", backend, True)
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", exc)
        return PartStatus("database", backend, False, "unreachable")


def check_broker() -> PartStatus:
    backend = _describe(settings.CELERY_BROKER_URL)
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=int(CHECK_TIMEOUT_SECONDS))
        return PartStatus("broker", backend, True)
    except Exception as exc:
        logger.warning("readiness: broker unreachable: %s", exc)
        return PartStatus("broker", backend, False, "unreachable")


async def _channel_layer_round_trip() -> None:
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel("readyz.")  # type: ignore[call-arg]
    await layer.send(channel, {"type": "readyz.ping"})
    message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT_SECONDS)
    if message.get("type") != "readyz.ping":
        raise RuntimeError("channel layer returned another message")


def check_channel_layer() -> PartStatus:
    backend = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
    try:
        async_to_sync(_channel_layer_round_trip)()
        return PartStatus("channel_layer", backend, True)
    except Exception as exc:
        logger.warning("readiness: channel layer unreachable: %r", exc)
        return PartStatus("channel_layer", backend, False, "unreachable")


def check_all() -> list[PartStatus]:
    return [check_database(), check_broker(), check_channel_layer()]
