"""A daemon thread per process that handles what is handed to it in batches:
the outbox's sends (outbox.py) and the ``sent_at`` marks (sent_marks.py).

The thread starts with the first item a process hands over, so a forked
process (Celery's prefork pool) starts its own; ``start_afresh``, called
after a fork (``os.register_at_fork``), drops the parent's items and
locks: a lock a thread of the parent held at the fork would stay held in
the child for good, and the parent handles its own items.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.db import close_old_connections

logger = logging.getLogger(__name__)


class Batches[T]:
    NAME = "tasklight-batches"
    # How long the thread lets a batch gather after it is woken.
    GATHER_SECONDS = 0.0
    # The most one batch takes; the rest wait for the next.
    LIMIT = 500
    # Logged when what is left at exit could not be handled.
    LOST_AT_EXIT = "what was left at exit was not handled"

    def __init__(self) -> None:
        self.start_afresh()

    def start_afresh(self) -> None:
        """As new, with nothing handed over and no thread."""
        self._lock = threading.Lock()
        self._handling = threading.Lock()
        self._items: list[T] = []
        self._wake = threading.Event()
        self._pid: int | None = None

    def add(self, item: T) -> None:
        self.add_all([item])

    def add_all(self, items: list[T]) -> None:
        with self._lock:
            self._items.extend(items)
            # A forked process inherits the object, not the thread.
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name=self.NAME, daemon=True).start()
        self._wake.set()

    def flush(self) -> int:
        """Handles what was handed over so far, once a batch being handled
        by the thread is done; returns how many it handled."""
        handled = 0
        with self._handling:
            while True:
                with self._lock:
                    batch, self._items = self._items[: self.LIMIT], self._items[self.LIMIT :]
                if not batch:
                    return handled
                self.handle(batch)
                handled += len(batch)

    def flush_at_exit(self) -> None:
        """For ``atexit``: what the thread had not handled yet."""
        try:
            self.flush()
        except Exception:
            logger.warning(self.LOST_AT_EXIT)

    def handle(self, batch: list[T]) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        """The thread's flush raised (its items are lost, not retried)."""
        logger.exception("%s: a batch failed", self.NAME)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self.GATHER_SECONDS:
                time.sleep(self.GATHER_SECONDS)
            try:
                self.flush()
            except Exception as exc:
                self.failed(exc)
            finally:
                close_old_connections()
