"""Liveness and readiness: what the About page and /readyz report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from workloads.models import Worker
from workloads.workers import fleet, unmarked_in_layer

from .celery import app as celery_app

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0
PING_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class PartStatus:
    name: str
    backend: str
    ok: bool
    # For people (/readyz, the About page); code reads not_migrated.
    detail: str = ""
    # The database answers but lacks a migration of this code: the release
    # step (migrate_all) has not run yet.
    not_migrated: bool = False

    @property
    def kind(self) -> str:
        """The backend without its host and port: what anyone may be told
        (/readyz, the About page); staff see ``backend``."""
        return self.backend.split("://", 1)[0]


def _describe(url: str) -> str:
    """The scheme and host of a URL, never its credentials."""
    scheme, _, rest = url.partition("://")
    host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
    return f"{scheme}://{host}" if host else f"{scheme}://"


def check_database() -> PartStatus:
    """For /readyz, the About page and a /metrics scrape (before it counts
    tasks): their warnings say only what is down; the line's request_id
    joins it to the access line of the request that asked."""
    backend = connection.vendor
    # The web process's pool would wait its own timeout (10 s) for a
    # connection; a probe must answer sooner. The pool checks each connection
    # it hands out and replaces broken ones, so this recovers by itself.
    pool = getattr(connection, "pool", None)
    try:
        if pool is not None:
            pool.open()
            with pool.connection(timeout=CHECK_TIMEOUT_SECONDS) as pooled:
                pooled.execute("SELECT 1")
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        if migrations_pending():
            return PartStatus("database", backend, False, NOT_MIGRATED, not_migrated=True)
        return PartStatus("database", backend, True)
    except Exception as exc:
        logger.warning("database unreachable: %s", exc)
        return PartStatus("database", backend, False, "unreachable")


NOT_MIGRATED = "migrations not applied: run the release step (migrate_all)"


# Once every migration is found applied, a process does not look again:
# migrations come with a new release, and its new processes look for themselves.
_migrated = False


def migrations_pending() -> bool:
    """Whether the database lacks a migration this code has: a process
    started before the release step (``migrate_all``) has run answers
    500s to anything that touches a new table or column."""
    global _migrated
    if _migrated:
        return False
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    _migrated = not executor.migration_plan(executor.loader.graph.leaf_nodes())
    return not _migrated


def check_broker() -> PartStatus:
    backend = _describe(settings.CELERY_BROKER_URL)
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=int(CHECK_TIMEOUT_SECONDS))
        return PartStatus("broker", backend, True)
    except Exception as exc:
        logger.warning("broker unreachable: %s", exc)
        return PartStatus("broker", backend, False, "unreachable")


async def _channel_layer_round_trip() -> None:
    layer = get_channel_layer()
    assert layer is not None
    deadline = asyncio.get_running_loop().time() + CHECK_TIMEOUT_SECONDS
    async with asyncio.timeout_at(deadline):
        channel = await layer.new_channel("readyz.")  # type: ignore[call-arg]
    ping = uuid.uuid4().hex
    answered = asyncio.Event()

    async def listen() -> None:
        while True:
            message = await layer.receive(channel)
            if message.get("ping") == ping:
                answered.set()

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0)  # into receive(), whose cancellation cleans up
    try:
        async with asyncio.timeout_at(deadline):
            # Pub/sub drops a message published before the SUBSCRIBE reached
            # Redis (it travels on another connection), and the subscription
            # comes back only once the layer has reconnected: ping again.
            while not answered.is_set():
                await layer.send(channel, {"type": "readyz.ping", "ping": ping})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), PING_INTERVAL_SECONDS)
    finally:
        # A cancelled receive() unsubscribes the channel: without this, every
        # probe would leave a subscription behind.
        listener.cancel()
        await asyncio.wait({listener}, timeout=PING_INTERVAL_SECONDS)


def check_channel_layer() -> PartStatus:
    backend = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
    try:
        async_to_sync(_channel_layer_round_trip)()
        return PartStatus("channel_layer", backend, True)
    except Exception as exc:
        logger.warning("channel layer unreachable: %r", exc)
        return PartStatus("channel_layer", backend, False, "unreachable")


def check_all() -> list[PartStatus]:
    """What /readyz reports: the parts a web process needs to serve."""
    return [check_database(), check_broker(), check_channel_layer()]


UNKNOWN_WORKERS = PartStatus("workers", "celery", False, "unknown: the database is unreachable")


def unknown_workers(database: PartStatus) -> PartStatus:
    """The workers while the database, where they report, is not to be asked
    (``database`` is not ok): unknown, and why."""
    if database.not_migrated:
        return PartStatus("workers", "celery", False, "unknown: the database is not migrated")
    return UNKNOWN_WORKERS


def check_workers(*, look_in_layer: bool = True) -> tuple[PartStatus, list[Worker]]:
    """Whether any worker consumes this deployment's queue, from the reports
    of their housekeepers (workloads/workers.py), and those alive; with
    ``look_in_layer``, whether each publishes where this process listens.
    Not part of /readyz: a web process serves and queues tasks without
    workers."""
    try:
        workers = fleet()
    except Exception as exc:
        logger.warning("about: workers unknown: %s", exc)
        return UNKNOWN_WORKERS, []
    if workers.alive:
        processes = sum(worker.concurrency for worker in workers.alive)
        detail = f"{len(workers.alive)} running, {processes} pool process{'es' if processes != 1 else ''}"
        elsewhere = _listening_elsewhere(workers.alive) if look_in_layer else ""
        if elsewhere:
            return PartStatus("workers", "celery", False, f"{detail}; {elsewhere}"), workers.alive
        return PartStatus("workers", "celery", True, detail), workers.alive
    if workers.last_seen is None:
        return PartStatus("workers", "celery", False, "none running: queued tasks wait for one"), []
    since = f"{workers.last_seen:%Y-%m-%d %H:%M:%S} UTC"
    return PartStatus("workers", "celery", False, f"none seen since {since}: queued tasks wait for one"), []


def _listening_elsewhere(alive: list[Worker]) -> str:
    """What to say of the running workers whose live events this web process
    does not hear (workloads/workers.py), or "" (and if Redis does not
    answer: the channel layer's own part says so)."""
    try:
        unmarked = unmarked_in_layer(alive)
    except Exception as exc:
        logger.warning("about: whether the workers share this process's channel layer is unknown: %s", exc)
        return ""
    if not unmarked:
        return ""
    which = "1 of them publishes" if len(unmarked) == 1 else f"{len(unmarked)} of them publish"
    return (
        f"{which} live events through another Redis or CHANNEL_LAYER_PREFIX than this web process's, "
        "so pages hear of their tasks only at each heartbeat: set CHANNEL_LAYER_URL and CHANNEL_LAYER_PREFIX "
        "the same on every process"
    )
