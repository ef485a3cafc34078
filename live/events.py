"""The shapes of what the server sends over /ws/ (docs/events.md)."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

EventKind = Literal["task.queued", "task.started", "task.succeeded", "task.failed", "task.cancelled"]


class EventFrame(TypedDict):
    type: Literal["event"]
    id: int
    event: EventKind
    task: dict[str, Any]


class ProgressFrame(TypedDict):
    type: Literal["progress"]
    task: dict[str, Any]


def user_group(user_id: int) -> str:
    """The channel-layer group every socket of one user joins."""
    return f"user.{user_id}"


# A live.signed_out message for every session of its user.
ANY_SESSION = "*"


def signed_out(*, session: str | None = None, token: bool = False) -> dict[str, Any]:
    """The message that closes the user's sockets opened with a session (its
    key, or ANY_SESSION) or with the token: their credential is gone."""
    return {"type": "live.signed_out", "session": session, "token": token}
