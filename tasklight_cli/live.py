"""Following one task to its end over /ws/ (docs/events.md), with a progress bar.

No race with a fast task: the socket is subscribed (its ``hello`` received)
before the task is queued, or, for a task queued earlier, before the task is
read over REST. Whatever changes after that read arrives on the socket. After a
dropped connection the same holds: reconnect, then read the task again.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from websockets.exceptions import ConnectionClosed

from .api import Api, is_task
from .errors import CliError, Exit, describe_connection_error

TERMINAL = ("succeeded", "failed", "cancelled")
# A ping makes the server send any stored event this socket missed (docs/events.md),
# so an event the channel layer lost still arrives within this many seconds.
PING_EVERY = 15.0
# After a drop, how long to keep trying to reconnect before giving up.
RECONNECT_FOR = 60.0
# A socket open with no hello this long: a proxy that takes the socket and
# passes nothing, or a server that is stuck.
HELLO_TIMEOUT = 15.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_MANY = 4429
# The server cannot serve the socket for now (its database or its channel
# layer is away): reconnect, as after a drop, even before the task exists.
CLOSE_TRY_AGAIN = 1013
BAR_WIDTH = 30


def is_finished(task: dict[str, Any]) -> bool:
    return task.get("status") in TERMINAL


class ProgressBar:
    """One redrawn line on a terminal; one line per change otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, interactive: bool | None = None) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.last: tuple[str, int] | None = None
        self.drawn = False

    def line(self, task: dict[str, Any]) -> str:
        percent = 100 if task.get("status") == "succeeded" else max(0, min(100, int(task.get("progress") or 0)))
        filled = BAR_WIDTH * percent // 100
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return (
            f"{task.get('kind', 'task')} {str(task.get('id', ''))[:8]} [{bar}] {percent:3d}% {task.get('status', '')}"
        )

    def update(self, task: dict[str, Any]) -> None:
        line = self.line(task)
        state = (str(task.get("status")), int(task.get("progress") or 0))
        if state == self.last:
            return
        self.last = state
        if self.interactive:
            self.stream.write(f"\r\x1b[2K{line}")
        else:
            self.stream.write(f"{line}\n")
        self.drawn = True
        self.stream.flush()

    def close(self) -> None:
        if self.interactive and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False

    def note(self, text: str) -> None:
        """A line of its own (\"tasklight: reconnecting...\"); the bar is drawn again below it."""
        self.close()
        self.stream.write(f"tasklight: {text}\n")
        self.stream.flush()
        self.last = None


def refused_too_many(error: dict[str, Any] | None) -> str:
    """What a close 4429 means, from the error frame the server sent before it."""
    if error is not None and error.get("code") == "too_many_frames":
        return f"the server closed the socket: too many frames ({error.get('message')})"
    limit = f" ({error.get('message')})" if error is not None and error.get("message") else ""
    return (
        f"the server refused another socket: too many open for this user{limit}; "
        "close a browser tab of Tasklight or another `tasklight ... --wait`, then try again"
    )


def parse_frame(api: Api, raw: str | bytes) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except ValueError:
        frame = None
    if not isinstance(frame, dict):
        raise CliError(
            f"{api.server}/ws/ did not answer as Tasklight does: a frame that is not a JSON object", Exit.UNREACHABLE
        )
    return frame


def follow(api: Api, start: Callable[[], dict[str, Any]], bar: ProgressBar) -> dict[str, Any]:
    """Subscribes, calls ``start`` (which queues or reads the task), and returns
    the task once it has finished. ``start`` runs only once; on a reconnect
    the task is read again over REST. The caller says the task goes on when
    this raises after ``start``."""
    task: dict[str, Any] | None = None
    connected_once = False
    lost_since: float | None = None
    delay = 0.5
    pings = itertools.count(1)
    while True:
        try_again = False
        error: dict[str, Any] | None = None  # the socket's last error frame, which a close 4429 follows
        try:
            with api.open_socket() as socket:
                try:
                    first = socket.recv(timeout=HELLO_TIMEOUT)
                except TimeoutError:
                    raise CliError(
                        f"{api.server}/ws/ took the socket but sent no hello in {HELLO_TIMEOUT:.0f} s",
                        Exit.UNREACHABLE,
                    ) from None
                hello = parse_frame(api, first)
                if hello.get("type") == "error":
                    if hello.get("code") == "too_many_sockets":
                        raise CliError(refused_too_many(hello), Exit.REFUSED)
                    raise CliError(f"{api.server}/ws/: {hello.get('message')}", Exit.REFUSED)
                if hello.get("type") != "hello":
                    raise CliError(f"{api.server}/ws/: unexpected first frame {hello.get('type')!r}", Exit.UNREACHABLE)
                if lost_since is not None:
                    bar.note("connected again" if connected_once else "connected")
                connected_once = True
                task = start() if task is None else api.task(task["id"])
                lost_since, delay = None, 0.5
                bar.update(task)
                if is_finished(task):
                    return task
                while True:
                    try:
                        raw = socket.recv(timeout=PING_EVERY)
                    except TimeoutError:
                        socket.send(json.dumps({"type": "ping", "id": next(pings)}))
                        continue
                    frame = parse_frame(api, raw)
                    kind = frame.get("type")
                    if kind in ("event", "progress"):
                        seen = frame.get("task")
                        if not is_task(seen) or seen["id"] != task["id"]:
                            continue  # another of the user's tasks
                        task = seen
                        bar.update(task)
                        if kind == "event" and is_finished(task):
                            return task
                    elif kind == "error":
                        error = frame
                    elif kind == "resync":
                        task = api.task(task["id"])
                        bar.update(task)
                        if is_finished(task):
                            return task
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code == CLOSE_UNAUTHENTICATED:
                raise CliError(f"the server refused the token on /ws/. {api.refused_advice}", Exit.AUTH) from None
            if code == CLOSE_TOO_MANY:
                raise CliError(refused_too_many(error), Exit.REFUSED) from None
            try_again = code == CLOSE_TRY_AGAIN
            if try_again:
                reason = f"the server asked to try again later ({code})"
            else:
                reason = f"connection closed ({code})" if code is not None else "connection lost"
        except CliError as error:
            # Before the task exists, or for anything but a lost connection, stop here.
            if task is None or error.code != Exit.UNREACHABLE:
                raise
            reason = error.message
        except BrokenPipeError:
            raise  # our own stdout or stderr closed (`| head`), not the connection
        except (OSError, TimeoutError) as exc:
            if task is None:
                raise api.unreachable(exc) from None
            reason = describe_connection_error(exc)
        if task is None and not try_again:
            raise CliError(f"{api.server}/ws/: {reason}", Exit.UNREACHABLE)
        now = time.monotonic()
        if lost_since is None:
            # Said once per outage, not at each attempt: never a silent minute.
            lost_since = now
            bar.note(f"{reason}; trying again for up to {RECONNECT_FOR:.0f} s")
        if now - lost_since > RECONNECT_FOR:
            if connected_once:
                raise CliError(f"lost the connection to {api.server} ({reason})", Exit.UNREACHABLE)
            raise CliError(
                f"could not connect to {api.server}/ws/ in {RECONNECT_FOR:.0f} s ({reason})", Exit.UNREACHABLE
            )
        time.sleep(delay)  # back off before reconnecting
        delay = min(delay * 2, 8.0)
