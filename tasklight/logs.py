"""Structured logs: every line names the request or the task it belongs to.

The web process keeps the current request's id in a context variable
(tasklight.middleware.RequestIdMiddleware), the worker the current task's id
(tasklight/celery.py, around each task); ``ContextFilter`` copies them onto
every record, and the formatters write them out: JSON lines in production,
a readable line in embedded mode (``LOG_FORMAT`` chooses; docs/observability.md).

Loaded by the LOGGING setting while Django configures itself: nothing here may
import Django's models or settings.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from tasklight.channel_layer import LAYER_DOWN

request_id: ContextVar[str | None] = ContextVar("tasklight_request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("tasklight_task_id", default=None)
REQUEST_ID_META_KEY = "tasklight.request_id"
# Set on a request that Tasklight answers 503 because a dependency is down
# (its code: ``database_unavailable``…; ``DependencyDownFilter`` below).
DEPENDENCY_DOWN_META_KEY = "tasklight.dependency_down"

# A client's or proxy's X-Request-ID is kept when it looks like an id: it ends
# up in every log line, so nothing long or with spaces, quotes or newlines.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The request's id: the caller's X-Request-ID if sane, else a new one."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


# A Tasklight task's id as Celery writes it after the task's name: name[id].
_TASK_IN_TEXT = re.compile(r"\[([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]")


# A traceback longer than this is cut in its middle, its start (the
# outermost frames, the exception's first words) and end (the innermost
# frames of the last exception, in a chain) kept. An exception's message may
# hold a whole file (a workload's, quoting what it read): a log line of 10 MB
# is split or dropped by log shippers (Docker's json-file splits lines at
# 16 KiB; Loki and CloudWatch refuse them past 256 KiB).
MAX_TRACEBACK_LENGTH = 16_000


def cut_traceback(text: str) -> str:
    if len(text) <= MAX_TRACEBACK_LENGTH:
        return text
    kept = MAX_TRACEBACK_LENGTH // 2
    return f"{text[:kept]}\n… [cut: {len(text) - 2 * kept:,} characters] …\n{text[-kept:]}"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string is the formatter's to report
        return ""


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``task_id`` from the context to each record
    (an explicit ``extra={"task_id": ...}`` wins). Set on the handler, so that
    records of every logger that reach it get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in (("request_id", request_id), ("task_id", task_id)):
            if getattr(record, name, None) is None:
                value = variable.get()
                if value is not None:
                    setattr(record, name, value)
        if getattr(record, "task_id", None) is None and record.name.startswith("celery."):
            # Celery's "received" line, in the worker's main process, names the task in its data;
            # its time limit lines (warnings and errors) in their text, as name[id]:
            # not every task's "succeeded" line, whose message would be formatted twice.
            data = getattr(record, "data", None)
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                record.task_id = data["id"]
            elif record.levelno >= logging.WARNING and (found := _TASK_IN_TEXT.search(_message(record))):
                record.task_id = found.group(1)
        if getattr(record, "request_id", None) is None:
            # django.request's line for a 4xx or 5xx, written outside the
            # middleware, names the request instead.
            meta = getattr(getattr(record, "request", None), "META", None)
            if isinstance(meta, dict) and REQUEST_ID_META_KEY in meta:
                record.request_id = meta[REQUEST_ID_META_KEY]
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, then the
    context ids and any ``extra`` fields."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn's copy of its message with terminal colours.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            **kwargs,
        )

    def formatException(self, ei: Any) -> str | list[str]:  # type: ignore[override]  # the base class says so too
        text = super().formatException(ei)
        return cut_traceback(text) if isinstance(text, str) else text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC with milliseconds: sorts, and compares across machines.
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger [request=… task=…]: message`` for people reading a terminal."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s", **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        ids = [
            f"{label}={value}"
            for label, value in (
                ("request", getattr(record, "request_id", None)),
                ("task", getattr(record, "task_id", None)),
            )
            if value is not None
        ]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return cut_traceback(super().formatException(ei))


class ClientNoiseFilter(logging.Filter):
    """Lines any client can cause at will are warnings, not errors: an ERROR
    should mean something is wrong with the service. Django's bad-Host line
    (a scanner's request) and uvicorn's invalid UTF-8 in a WebSocket text
    frame (the socket is closed with 1007, as it should be; its traceback
    says nothing about us) come down to WARNING, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and _client_noise(record):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _client_noise(record: logging.LogRecord) -> bool:
    if record.name == "django.security.DisallowedHost":
        return True
    return record.name == "uvicorn.error" and str(record.msg).startswith("Invalid UTF-8 sequence received from client")


# How the cancel watchdog ends a pool process whose task did not stop when
# cancelled (workloads/tasks.py CancelWatchdog): os._exit with this code, at
# once and without clean-up, as SIGKILL would, but a status that Celery's
# main process sees and that no SIGKILL from elsewhere (the kernel's OOM
# killer, an operator) has. Not one billiard gives a meaning (0, 1, 155).
WATCHDOG_EXIT_CODE = 86
_WATCHDOG_EXIT = re.compile(rf"\bexitcode {WATCHDOG_EXIT_CODE}\b")


class WatchdogExitFilter(logging.Filter):
    """The two ERROR lines Celery's main process writes when a pool process
    exits mid-task, billiard's "Process ... exited with 'exitcode 86'" and
    "Task handler raised error: WorkerLostError(...)", are INFO when the cancel
    watchdog ended it on purpose (it has said so at WARNING, naming the task
    and the process): an ERROR should mean something went wrong. A process
    that dies otherwise (SIGKILL, a crash) keeps its ERROR lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and _watchdog_exit(record):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (the cancel watchdog ended it: its task did not stop when cancelled)"
            # Written where INFO lines are (LOG_LEVEL, the root logger's level; Celery keeps
            # billiard's logger at ERROR, for the lines of its that are errors).
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


def _watchdog_exit(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    if record.msg == "Process %r pid:%r exited with %r" and len(args) == 3:
        return bool(_WATCHDOG_EXIT.fullmatch(str(args[2])))
    if record.msg == "Task handler raised error: %r" and len(args) == 1:
        return type(args[0]).__name__ == "WorkerLostError" and bool(_WATCHDOG_EXIT.search(str(args[0])))
    return False


class LostAckFilter(logging.Filter):
    """kombu's CRITICAL "Couldn't ack 1, reason: RecoverableConnectionError(...
    'connection already closed')", with a traceback, is what a worker writes
    when a task ends after its broker connection dropped (a network blip, a
    RabbitMQ restart): the ack belonged to the old connection. Nothing is
    wrong: RabbitMQ delivered the message again when the connection closed,
    and whichever worker gets it drops it, the task having ended (or leaves
    it to this one while it runs: docs/lifecycle.md). A WARNING saying so,
    without the traceback; a failed ack for any other reason stays CRITICAL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and _lost_ack(record):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
            record.msg = (
                f"{record.msg}: the worker's broker connection dropped while the task ran; RabbitMQ delivers "
                "its message again, and the worker that gets it drops it (the task has ended, once)"
            )
        return True


class RejectFilter(logging.Filter):
    """Celery writes a task that raised ``Reject`` (a message sent back to
    the queue on purpose: workloads/tasks.py, when the broker would not take
    it to look again later) as a WARNING with a traceback; the line says it
    all, the traceback is only the ``raise``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_reject(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def _is_reject(exc: BaseException | None) -> bool:
    from celery.exceptions import Reject

    return isinstance(exc, Reject)


def _lost_ack(record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Couldn't ack ") or not record.exc_info:
        return False
    from amqp.exceptions import ConnectionError as AmqpConnectionError

    # py-amqp's RecoverableConnectionError ("connection already closed") is
    # one of its ConnectionErrors; a socket's own is an OSError.
    return isinstance(record.exc_info[1], AmqpConnectionError | OSError)


def describe_error(exc: BaseException) -> str:
    """An error and what caused it, in one line: redis-py's "Connection
    lost" says more with the reset beneath it."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


class RepeatsAsWarnings(logging.Filter):
    """Lines of a dependency being down, not of a bug: each kind (``kind()``
    of the record; None leaves the record as it is) becomes a WARNING with
    the text of ``say()`` and no traceback, written once every
    ``repeat_seconds`` at most, saying how many were left out meanwhile."""

    repeat_seconds = 60.0

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self._written_at: dict[str, float] = {}
        self._left_out: Counter[str] = Counter()

    def kind(self, record: logging.LogRecord) -> str | None:
        raise NotImplementedError

    def say(self, record: logging.LogRecord, kind: str) -> str:
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind(record)
        if kind is None:
            return True
        now = time.monotonic()
        with self._lock:
            written_at = self._written_at.get(kind)
            if written_at is not None and now - written_at < self.repeat_seconds:
                self._left_out[kind] += 1
                return False
            self._written_at[kind] = now
            left_out = self._left_out.pop(kind, 0)
        message = self.say(record, kind)
        if left_out:
            message += f" ({left_out} more such lines in the last {now - (written_at or now):.0f} s)"
        record.msg, record.args = message, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


# How often each of channels_redis' lines about Redis being away is written
# at most (see below); those in between are counted.
LAYER_REPEAT_SECONDS = 60.0


class ChannelLayerOutageFilter(RepeatsAsWarnings):
    """channels_redis' pub/sub layer writes an ERROR with a traceback every
    second while Redis is away ("Unexpected exception in receive task", from
    the loop that reads its subscriptions and reconnects them) and one for
    each socket that ends meanwhile ("Unexpected exception while cleaning-up
    channel"). Redis away is a dependency down, not a bug: /readyz names it,
    the layer comes back by itself, and sockets catch up from the database
    (docs/events.md). Each such line (a redis-py or socket error, as
    tasklight.channel_layer.LAYER_DOWN has it; any other error stays an ERROR) becomes
    a WARNING with the cause in one line, and each is written once a minute
    at most, saying how many were left out meanwhile."""

    repeat_seconds = LAYER_REPEAT_SECONDS

    def kind(self, record: logging.LogRecord) -> str | None:
        if record.name != "channels_redis.pubsub" or record.levelno < logging.ERROR or not record.exc_info:
            return None
        return str(record.msg) if isinstance(record.exc_info[1], LAYER_DOWN) else None

    def say(self, record: logging.LogRecord, kind: str) -> str:
        assert record.exc_info is not None and record.exc_info[1] is not None
        cause = describe_error(record.exc_info[1])
        return f"{record.getMessage().rstrip(': ')}: the channel layer cannot reach Redis: {cause}"


# How often Django's line about a 503 answered for a dependency that is down
# is written at most, for each kind of answer.
DEPENDENCY_DOWN_REPEAT_SECONDS = 60.0


class DependencyDownFilter(RepeatsAsWarnings):
    """Django writes an ERROR ("Service Unavailable: /api/tasks/") for every
    5xx it answers, on logger ``django.request``. The 503s that Tasklight
    answers because PostgreSQL or Redis is down (``database_unavailable``,
    ``cache_unavailable``, /readyz's ``not_ready``; each marked on its
    request, ``DEPENDENCY_DOWN_META_KEY``) are a dependency down, not a bug:
    one per request, the whole outage long, they buried any real error, and
    Tasklight has said why at WARNING already. Such a line becomes a WARNING
    naming the answer, written once a minute at most for each answer, saying
    how many were left out meanwhile; a 5xx of any other cause (a bug's 500)
    stays an ERROR. Such a line carries no traceback (one raised in a
    middleware comes with one, through handler500). Set on the
    ``django.request`` logger, where its lines are made."""

    repeat_seconds = DEPENDENCY_DOWN_REPEAT_SECONDS

    def kind(self, record: logging.LogRecord) -> str | None:
        if record.levelno < logging.ERROR or getattr(record, "status_code", None) != 503:
            return None
        meta = getattr(getattr(record, "request", None), "META", None)
        answer = meta.get(DEPENDENCY_DOWN_META_KEY) if isinstance(meta, dict) else None
        return answer if isinstance(answer, str) else None

    def say(self, record: logging.LogRecord, kind: str) -> str:
        # An error raised in a middleware reaches Django's handler500, whose
        # line carries the traceback: Tasklight's WARNING has said why.
        return f"{_message(record)}: answered 503 {kind}, a dependency being down"
