"""Pushes messages to the channel layer from any process: web or worker.

One long-lived event loop per process, in a daemon thread, owns the layer's
connections. Calling ``async_to_sync(layer.group_send)`` per message instead
makes a new loop and a new Redis connection each time: slower (STACK-NOTES),
and the source of channels_redis' "Event loop is closed" errors in workers.
Messages leave in the order they were pushed, one at a time.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


class Publisher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None

    def push(self, group: str, message: dict[str, Any]) -> None:
        """Queues a group_send; returns at once."""
        loop, queue = self._started()
        loop.call_soon_threadsafe(queue.put_nowait, (group, message))

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until every pushed message has been handed to the layer."""
        if self._pid != os.getpid() or self._loop is None or self._queue is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self._queue.join(), self._loop)
        try:
            future.result(timeout)
            return True
        except TimeoutError:
            future.cancel()
            return False

    def _started(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, dict[str, Any]]]]:
        # A forked process (Celery's prefork pool) inherits the object but not
        # the thread: start a fresh loop in each process that pushes.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()
        assert self._loop is not None and self._queue is not None
        return self._loop, self._queue

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._queue = asyncio.Queue()
            ready.set()
            loop.run_until_complete(self._send_forever())

        threading.Thread(target=run, name="tasklight-publisher", daemon=True).start()
        ready.wait()
        self._loop, self._pid = loop, os.getpid()

    async def _send_forever(self) -> None:
        assert self._queue is not None
        layer = get_channel_layer()
        assert layer is not None, "CHANNEL_LAYERS is not configured"
        while True:
            group, message = await self._queue.get()
            try:
                await layer.group_send(group, message)
            except Exception:
                logger.exception("could not publish %s to %s", message.get("type"), group)
            finally:
                self._queue.task_done()


publisher = Publisher()
# A worker process that exits right after a task must not drop its last event.
atexit.register(publisher.flush, 2.0)
