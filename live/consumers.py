"""The /ws/ consumer: one per socket, joined to its user's group.

Delivery rule: from ``hello`` on, a socket sends each of its user's newer
events once, in id order; a ``resume`` adds the older ones it asks for, each
once, after any live event that reached the socket before it. Ids are
gap-free per user (live/models.py), so a live event that skips ahead means an
earlier one is still in flight from another process, or was lost by the
channel layer: the consumer sends the missing ones from the table first and
drops a late copy when it comes. Every ``ping`` also
checks the table, so an event the layer lost (Redis restarted, say) reaches
the socket by the next heartbeat at the latest, even if no later event comes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import redis
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.utils import timezone

from tasklight import metrics
from tasklight.channel_layer import LAYER_DOWN, REDIS_TIMEOUT_SECONDS
from tasklight.db import DATABASE_DOWN
from tasklight.logs import describe_error

from . import services
from .events import ANY_SESSION, user_group

logger = logging.getLogger(__name__)
# One line per terminal event sent on a socket, with its task id: the end of a
# task's trail through the logs. Off unless LOG_DELIVERIES=1 (volume).
delivery_logger = logging.getLogger("live.delivery")

# Close codes (docs/events.md): no valid credentials (DESIGN.md §5); too
# many sockets for one user, or too many frames from one socket.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_MANY = 4429
# The database or the channel layer did not answer (docs/events.md):
# reconnect and resume later.
CLOSE_TRY_AGAIN = 1013
# A socket's handshake waits this long at most for each thing it asks of the
# channel layer (its channel, its group), however many handshakes wait with
# it: channels_redis makes one connection to Redis per process for every
# subscription, one command at a time, so without a deadline of its own each
# waited for all those before it, a REDIS_TIMEOUT_SECONDS each while Redis
# did not answer (the fifth of five at once, 55 s). A little more than
# redis-py's own deadline, so that redis-py ends the one under way itself
# (cancelled in the middle of connecting, redis-py keeps a connection whose
# handshake never finished): the deadline cancels those still waiting.
LAYER_WAIT_SECONDS = REDIS_TIMEOUT_SECONDS + 1
REPLAY_BATCH = 500
# Credential checks that come due within this long of each other share one
# query (CredentialChecks): a socket whose credential ended closes within
# WS_CREDENTIAL_CHECK_SECONDS and this.
CHECK_BATCH_SECONDS = 1.0
# A credential check that the database could not answer says so in one
# WARNING per process this often at most, with the count (one per socket
# per check would be ten thousand lines a minute during an outage).
CHECK_WARNING_EVERY_SECONDS = 60.0
_unanswered_checks = 0
_next_check_warning = 0.0

# Sockets per user in this process (each web process counts its own).
_sockets_per_user: Counter[int] = Counter()


class FrameBudget:
    """A token bucket: FRAME_BURST frames at once, FRAME_RATE per second after."""

    def __init__(self) -> None:
        self.tokens = float(settings.WS_FRAME_BURST)
        self.updated = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(settings.WS_FRAME_BURST, self.tokens + (now - self.updated) * settings.WS_FRAME_RATE)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e400
        raise ValueError(f"{text} is out of range")
    return number


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_frame(text: str) -> Any:
    """A client's frame: strict JSON (no NaN or Infinity, which Python's json
    takes and would echo back in a pong, and a browser's JSON.parse refuses).
    ValueError for anything else, too deep a nesting included."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class LiveConsumer(AsyncJsonWebsocketConsumer):
    user_id: int
    # This socket has been sent every event in (sent_after, last_sent_id]:
    # from hello on, live or from the table; a resume extends it downwards.
    sent_after: int
    last_sent_id: int
    # The newest read_up_to this socket has sent (hello, inbox frames).
    read_up_to: int
    # How the socket was signed in: the session's key, or None for a token
    # (its key then: live/auth.py).
    session_key: str | None = None
    token_key: str | None = None
    # Set once the server has closed it: frames still buffered are dropped,
    # and nothing more is sent.
    closing = False
    # Whether it holds one of its user's socket slots (and the group).
    counted = False
    # When the socket next looks its credential up (docs/events.md).
    credential_timer: asyncio.TimerHandle | None = None
    # Why the channel layer could not take this socket (None: it did).
    layer_down: Exception | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' own ``AsyncConsumer.__call__``, but for two things.

        A layer that cannot give the socket its channel (Redis away: the
        pub/sub layer subscribes to it at once) made Channels raise before
        reading the handshake, and uvicorn answered it with a 500. Now
        connect() closes the socket with 1013, as for a group it cannot join.

        A socket gives its slot back however it ends: a client gone in the
        middle of a replay makes sending raise, and disconnect() is then
        never called (Channels calls it only on a websocket.disconnect)."""
        self.scope = scope
        self.base_send = send
        layer = get_channel_layer(self.channel_layer_alias)
        assert layer is not None, "CHANNEL_LAYERS is not configured"
        self.channel_layer = layer
        sources = [receive]
        try:
            self.channel_name = await once_more_if_down(layer.new_channel)
        except LAYER_DOWN as exc:
            self.layer_down = exc
        else:
            sources.append(functools.partial(layer.receive, self.channel_name))
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass
        finally:
            await self.release()

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if _sockets_per_user[user.id] >= settings.MAX_SOCKETS_PER_USER:
            await self.accept()
            await self.send_error("too_many_sockets", f"At most {settings.MAX_SOCKETS_PER_USER} sockets per user.")
            await self.close(code=CLOSE_TOO_MANY)
            return
        _sockets_per_user[user.id] += 1
        metrics.open_sockets.inc()
        self.counted = True
        self.user_id = user.id
        # A token's socket has no session in its scope (live/auth.py).
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        token_key = self.scope.get("token_key")
        self.token_key = token_key if self.session_key is None and isinstance(token_key, str) else None
        self.budget = FrameBudget()
        self.group = user_group(user.id)
        # Join before reading the last id, so that nothing committed after
        # the read can be missed: it arrives live. A socket that cannot join
        # would hear nothing live: told to come back, it resumes from the
        # last id its client has, and misses nothing.
        if self.layer_down is None:
            try:
                await once_more_if_down(functools.partial(self.channel_layer.group_add, self.group, self.channel_name))
            except LAYER_DOWN as exc:
                self.layer_down = exc
        if self.layer_down is not None:
            logger.warning(
                "socket of user %s refused for now (closed with %d), the channel layer is unavailable: %s",
                user.id,
                CLOSE_TRY_AGAIN,
                describe_error(self.layer_down),
            )
            await self.release()
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        await self.accept()
        try:
            hello = await database_sync_to_async(services.hello_state)(user.id, self.session_key)
        except DATABASE_DOWN as exc:
            logger.warning("socket of user %s: no hello, the database is unavailable: %s", user.id, exc)
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        self.last_sent_id = self.sent_after = hello.inbox["last_event_id"]
        self.read_up_to = hello.inbox["read_up_to"]
        frame = {"type": "hello", "user": user.username, **hello.inbox}
        await self.send_json(frame)
        if self.session_key is not None:
            await self.follow_credential(holds=True, expires_at=hello.session_expires_at)
        elif self.token_key is not None:
            await self.follow_credential(holds=True, expires_at=None)

    async def follow_credential(self, *, holds: bool, expires_at: datetime | None) -> None:
        """Closes the socket with 4401 if its credential no longer holds, or
        its session has expired (nothing tells a socket of an expiry); else
        sets its timer for the next check (CredentialChecks).

        An ended credential is told to every socket at once (live/signals.py),
        but over the channel layer, once: a message published while Redis was
        away, or that this process's lost subscription missed, is never
        replayed. The checks bound how long such a socket outlives it."""
        if self.closing or not self.counted:
            return  # the socket ended during the lookup
        now = timezone.now()
        if not holds or (self.session_key is not None and (expires_at is None or expires_at <= now)):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.check_again(expires_at=expires_at)

    def check_again(self, *, expires_at: datetime | None) -> None:
        """Within WS_CREDENTIAL_CHECK_SECONDS, somewhere in its second half,
        so that sockets opened together (a web process restarted) spread
        their checks; a second after its session's expiry if that is sooner."""
        delay = settings.WS_CREDENTIAL_CHECK_SECONDS * random.uniform(0.5, 1.0)  # noqa: S311  # not a secret
        if expires_at is not None:
            delay = min(delay, (expires_at - timezone.now()).total_seconds() + 1)
        self.credential_timer = asyncio.get_running_loop().call_later(delay, self.credential_due)

    def credential_due(self) -> None:
        self.credential_timer = None
        credential_checks.add(self)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' own dispatch, without its ``aclose_old_connections()``
        before every handler. That call, for consumers on the async ORM, is a
        hop to a thread and back for each event sent on each socket (~9 % of
        the web process's CPU under load, docs/benchmarks.md). This consumer
        reaches the database only through ``database_sync_to_async``, which
        closes stale connections itself, in the thread that uses them."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        await self.release()

    async def release(self) -> None:
        """Gives back the socket's slot and leaves its user's group, once."""
        if self.credential_timer is not None:
            self.credential_timer.cancel()
            self.credential_timer = None
        if not self.counted:
            return
        self.counted = False
        _sockets_per_user[self.user_id] -= 1
        metrics.open_sockets.dec()
        if _sockets_per_user[self.user_id] <= 0:
            del _sockets_per_user[self.user_id]
        if not hasattr(self, "channel_name"):
            return  # the layer gave it no channel: it joined nothing
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        except Exception as exc:  # the layer is away: its membership expires with it
            logger.warning("socket of user %s: could not leave its group: %s", self.user_id, exc)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        await super().close(code=code, reason=reason)

    async def send_json(self, content: Any, close: bool = False) -> None:
        if not self.closing:
            await super().send_json(content, close=close)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return encode_frame(content)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.closing:
            return
        if hasattr(self, "budget") and not self.budget.spend():
            await self.send_error("too_many_frames", f"At most {settings.WS_FRAME_RATE:g} frames per second.")
            await self.close(code=CLOSE_TOO_MANY)
            return
        if text_data is None:
            await self.send_error("binary_not_supported", "Frames must be JSON text.")
            return
        try:
            content = parse_frame(text_data)
        except ValueError:
            await self.send_error("invalid_json", "The frame is not valid JSON.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_error("invalid_frame", 'A frame is a JSON object with a string "type".')
            return
        if not hasattr(self, "user_id"):
            return
        kind = content["type"]
        if kind == "ping":
            try:
                await self.catch_up()
            except DATABASE_DOWN as exc:  # what is stored comes at a later ping or event
                logger.warning("socket of user %s: no catch-up, the database is unavailable: %s", self.user_id, exc)
            await self.send_json({"type": "pong", "id": content.get("id")})
        elif kind == "resume":
            try:
                await self.resume(content.get("after"))
            except DATABASE_DOWN as exc:  # the client resumes again once it has reconnected
                logger.warning("socket of user %s: no resume, the database is unavailable: %s", self.user_id, exc)
                await self.close(code=CLOSE_TRY_AGAIN)
        else:
            await self.send_error("unknown_type", f"Unknown frame type {kind[:40]!r}.")

    async def resume(self, after: Any) -> None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            await self.send_error("invalid_resume", '"after" must be a non-negative integer event id.')
            return
        newest = await database_sync_to_async(services.last_event_id)(self.user_id)
        try:
            services.check_cursor(after=after, newest=newest)
        except services.CursorAhead as ahead:  # GET /api/events/ answers it with a 400
            await self.send_error("invalid_resume", str(ahead))
            return
        metrics.socket_resumes.inc()
        if after >= self.sent_after:
            # The socket has had every event from after + 1 up to last_sent_id.
            await self.replay(max(after, self.last_sent_id), reason="resume")
            return
        # Older than anything this socket has had: live events flow from
        # hello on and may have come before this resume. The older ones
        # follow them, and nothing already sent is sent again.
        if not await self.replay(after, reason="resume", up_to=self.sent_after):
            return
        self.sent_after = after
        if newest > self.last_sent_id:  # stored, and not yet here live
            await self.replay(self.last_sent_id, reason=None)

    async def catch_up(self) -> None:
        """Sends what is stored but has not reached this socket: its events,
        then the inbox if it was marked read since this socket last heard of
        it (an inbox message the layer lost). Both from one read of the
        user's row; the inbox's count only when that read moved."""
        position = await database_sync_to_async(services.stream_position)(self.user_id)
        newest, read_up_to = position
        if newest > self.last_sent_id:
            await self.replay(self.last_sent_id, reason="catch_up")
        if read_up_to > self.read_up_to:
            metrics.socket_replays.labels("inbox").inc()
            state = await database_sync_to_async(services.inbox_state)(self.user_id, position)
            await self.send_inbox({"type": "inbox", **state})

    async def replay(self, after: int, *, reason: str | None, up_to: int | None = None) -> bool:
        """Sends the stored events after ``after``, oldest first: all of
        them, moving ``last_sent_id``; or, with ``up_to``, those up to it
        (older than the ones this socket has had). False after a ``resync``:
        some of them are past retention. Counted as a replay for ``reason``
        (None: the rest of a replay already counted)."""
        if reason is not None:
            metrics.socket_replays.labels(reason).inc()
        if up_to is None:
            self.last_sent_id = after
        position = after
        while up_to is None or position < up_to:
            # Ids have no gaps: (position, up_to] holds up_to - position events.
            limit = REPLAY_BATCH if up_to is None else min(REPLAY_BATCH, up_to - position)
            try:
                batch = await database_sync_to_async(services.events_after)(
                    user_id=self.user_id, after=position, limit=limit
                )
            except services.CursorExpired as expired:
                # The client reloads its state over REST and continues from here.
                if up_to is None:
                    self.sent_after = self.last_sent_id = max(expired.newest, self.last_sent_id)
                else:  # the older ones are gone; what the socket has had, it keeps
                    self.last_sent_id = max(expired.newest, self.last_sent_id)
                metrics.socket_resyncs.inc()
                await self.send_json({"type": "resync", "last_event_id": expired.newest})
                return False
            except services.CursorAhead:
                # Every caller has just read a newest id above ``position``:
                # only the user's events deleted meanwhile (the data reset)
                # gets here. Nothing to send; the next hello tells the client.
                break
            metrics.replayed_events.inc(len(batch))
            for event in batch:
                frame = services.frame_for(event)
                await self.send_json(frame)
                position = event.sequence
                if up_to is None:
                    self.last_sent_id = position
                log_delivery(frame)
            if len(batch) < limit:
                break
        return True

    async def send_inbox(self, frame: dict[str, Any]) -> None:
        if frame["read_up_to"] < self.read_up_to:
            return  # older than what this socket has told: a late copy
        self.read_up_to = frame["read_up_to"]
        await self.send_json(frame)

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    # Channel-layer handlers: serialise and send, nothing else.

    async def live_event(self, message: dict[str, Any]) -> None:
        frame = message["frame"]
        if frame["id"] <= self.last_sent_id:
            return
        if frame["id"] > self.last_sent_id + 1:
            try:
                await self.replay(self.last_sent_id, reason="gap")
            except DATABASE_DOWN as exc:
                # Not sent ahead of the missing ones: it is stored, and comes
                # with them from the table at the next event or ping.
                logger.warning("socket of user %s: gap not filled, database unavailable: %s", self.user_id, exc)
                return
            if frame["id"] <= self.last_sent_id:
                return
        await self.send_json(frame)
        self.last_sent_id = frame["id"]
        metrics.event_sent(message.get("committed_at"))
        log_delivery(frame)

    async def live_progress(self, message: dict[str, Any]) -> None:
        await self.send_json(message["frame"])

    async def live_inbox(self, message: dict[str, Any]) -> None:
        await self.send_inbox(message["frame"])

    async def live_signed_out(self, message: dict[str, Any]) -> None:
        """The credential this socket was opened with no longer holds
        (live/signals.py): a log-out of its session, its user's token
        revoked, or the user deactivated or deleted."""
        by_token = self.session_key is None
        if message["token"] if by_token else message["session"] in (self.session_key, ANY_SESSION):
            await self.close(code=CLOSE_UNAUTHENTICATED)


def encode_frame(content: Any) -> str:
    """A frame's JSON as the text a WebSocket text frame carries in UTF-8:
    each character as itself. Channels' ``encode_json`` is ``json.dumps``
    with ``ensure_ascii``, which wrote every character outside ASCII as a
    ``\\uXXXX`` escape: a 1 MiB text_stats text of accented or CJK letters
    went in frames of 1.8 to 2 MB, 3 MB in the worst case (the REST API, DRF's
    ``UNICODE_JSON``, already answered 1 MiB). It is faster too (no escaping).

    A lone surrogate has no UTF-8: none is stored (workloads.registry
    refuses them in params, results and errors), but a client's ping ``id``
    is echoed in its pong as the client sent it, and ``"\\ud800"`` is JSON.
    Such a frame keeps Channels' escapes, as JSON allows."""
    text = json.dumps(content, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content)
    return text


async def once_more_if_down[T](call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, and once more if the layer was down, each within
    LAYER_WAIT_SECONDS. A connection that Redis reset (Redis restarted, the
    connection killed) fails the command that finds it so, even though
    redis-py reconnects as it fails: the second try goes through. A Redis
    that is really away fails both at once (a refused connection), and the
    socket is told to try again. One that did not answer in time is not
    asked again: the socket would wait twice as long for the same 1013."""
    try:
        return await within_layer_wait(call)
    except LAYER_DOWN as exc:
        if isinstance(exc, TimeoutError | redis.TimeoutError):
            raise
        logger.info("the channel layer failed, trying once more: %s", describe_error(exc))
        return await within_layer_wait(call)


async def within_layer_wait[T](call: Callable[[], Awaitable[T]]) -> T:
    try:
        async with asyncio.timeout(LAYER_WAIT_SECONDS):
            return await call()
    except TimeoutError as exc:
        if exc.args:  # not the deadline's: the call's own
            raise
        raise TimeoutError(f"no answer within {LAYER_WAIT_SECONDS:g} s") from None


class CredentialChecks:
    """The credential checks of a web process's sockets that come due within
    CHECK_BATCH_SECONDS of each other, made together: one trip to the
    database thread and one query per kind of credential
    (services.credentials_that_hold), however many sockets. Ten thousand
    sockets checking every 45 s on average are ~220 checks a second: one
    trip a second, not 220 on the thread that also serves every handshake's
    token lookup and hello (docs/events.md#a-lost-sign-out-message)."""

    def __init__(self) -> None:
        self.due: list[LiveConsumer] = []
        # The loop a flush is set on, and the loop one is under way on: one
        # at a time, so that a database that is slow to answer is not sent
        # a batch a second meanwhile (a test's loop can end with either set).
        self.armed_on: asyncio.AbstractEventLoop | None = None
        self.flushing_on: asyncio.AbstractEventLoop | None = None

    def add(self, consumer: LiveConsumer) -> None:
        self.due.append(consumer)
        self.arm()

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        if self.armed_on is not loop and self.flushing_on is not loop:
            self.armed_on = loop
            loop.call_later(CHECK_BATCH_SECONDS, self.start_flush)

    def start_flush(self) -> None:
        loop = asyncio.get_running_loop()
        self.armed_on, self.flushing_on = None, loop
        due, self.due = self.due, []
        loop.create_task(self.flush(due)).add_done_callback(self.flushed)

    def flushed(self, task: asyncio.Task[None]) -> None:
        log_failure(task)
        self.flushing_on = None
        if self.due:
            self.arm()

    async def flush(self, due: list[LiveConsumer]) -> None:
        due = [consumer for consumer in due if consumer.counted and not consumer.closing]
        if not due:
            return
        tokens = [(c.user_id, c.token_key) for c in due if c.session_key is None and c.token_key is not None]
        sessions = [(c.user_id, c.session_key) for c in due if c.session_key is not None]
        try:
            holding = await database_sync_to_async(services.credentials_that_hold)(tokens=tokens, sessions=sessions)
        except DATABASE_DOWN as exc:
            # No reason to sign anyone out: the sockets stay, checked again later.
            unanswered_checks(len(due), exc)
            for consumer in due:
                if consumer.counted and not consumer.closing:
                    consumer.check_again(expires_at=None)
            return
        for consumer in due:
            if consumer.session_key is not None:
                expires_at = holding.sessions.get((consumer.user_id, consumer.session_key))
                holds = expires_at is not None
            else:
                expires_at, holds = None, (consumer.user_id, consumer.token_key) in holding.tokens
            try:
                await consumer.follow_credential(holds=holds, expires_at=expires_at)
            except Exception as exc:  # a client gone as it is closed: the others are still followed
                logger.warning("socket of user %s: credential check not followed: %r", consumer.user_id, exc)


credential_checks = CredentialChecks()


def log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("sockets' credential check failed: %r", exc)


def unanswered_checks(count: int, error: Exception) -> None:
    global _unanswered_checks, _next_check_warning
    _unanswered_checks += count
    now = time.monotonic()
    if now < _next_check_warning:
        return
    logger.warning("%d socket credential checks put off, the database is unavailable: %s", _unanswered_checks, error)
    _unanswered_checks = 0
    _next_check_warning = now + CHECK_WARNING_EVERY_SECONDS


def log_delivery(frame: Any) -> None:
    if frame["event"] in services.NOTIFICATION_KINDS and delivery_logger.isEnabledFor(logging.INFO):
        delivery_logger.info(
            "event sent to a socket",
            extra={"task_id": frame["task"]["id"], "event": frame["event"], "event_id": frame["id"]},
        )
