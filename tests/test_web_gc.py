"""A web process gaining thousands of sockets does not stall in full garbage
collections while they connect (tasklight/asgi.py, docs/benchmarks.md
"Sockets coming and going"): each would walk every open socket's objects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from .stack import Account
from .test_metrics import TOKEN, sample, scrape

SOCKETS = 3000  # ~430,000 objects: two full collections with CPython's default thresholds


async def open_sockets(base_url: str, token: str, count: int) -> list[ClientConnection]:
    url = base_url.replace("http://", "ws://") + "/ws/"
    gate = asyncio.Semaphore(50)
    opened: list[ClientConnection] = []

    async def one() -> None:
        async with gate:
            ws = await connect(
                url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=30, ping_interval=None
            )
            opened.append(ws)
            hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert hello["type"] == "hello", hello

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        for ws in opened:
            ws.transport.abort()
        raise
    return opened


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_thousands_of_sockets_connect_without_a_full_collection(private_stack: Any) -> None:
    running = private_stack(METRICS_TOKEN=TOKEN, MAX_SOCKETS_PER_USER=str(SOCKETS))
    alice = Account.sign_up(running.base_url)

    full_before = sample(scrape(running.base_url), "tasklight_gc_pause_seconds_count", generation="2")

    async def connect_all() -> str:
        sockets = await open_sockets(running.base_url, alice.token, SOCKETS)
        try:
            return await asyncio.to_thread(scrape, running.base_url)
        finally:
            for ws in sockets:
                ws.transport.abort()

    after = asyncio.run(connect_all())
    assert sample(after, "tasklight_open_sockets") == SOCKETS
    # Young collections ran meanwhile; no full one did.
    assert (sample(after, "tasklight_gc_pause_seconds_count", generation="1") or 0) >= 1
    assert sample(after, "tasklight_gc_pause_seconds_count", generation="2") == full_before
