"""Runs one kind of request N times through Tasklight's ASGI application, in
this process, with no server and no client: what `bench.instructions` runs
under valgrind. Made a user with a token and 20 tasks first, and 20 requests
to warm up; exits non-zero if a request does not answer as expected.

    python -m bench.asgi_requests post 100      # with the stack's environment
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")

WARM_UP = 20

# kind: method, path, body, the status it must answer
KINDS: dict[str, tuple[str, str, bytes, int]] = {
    "health": ("GET", "/healthz", b"", 200),
    "list": ("GET", "/api/tasks/", b"", 200),
    "missing": ("GET", f"/api/tasks/{uuid.UUID(int=0)}/", b"", 404),
    "post": ("POST", "/api/tasks/", json.dumps({"kind": "noop", "params": {}}).encode(), 202),
}


async def request(application: Any, token: str, method: str, path: str, body: bytes) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Token {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    received = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:  # the application waits for a disconnect only after the response
            await asyncio.Event().wait()
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await application(scope, receive, send)
    return status[0]


def user_with_tasks() -> str:
    """A new user, their API token, and 20 tasks for the list to show."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from workloads.services import create_task

    user = User.objects.create_user(f"instructions-{uuid.uuid4().hex[:12]}", password=None)
    for _ in range(20):
        create_task(owner=user, kind="noop", params={})
    return str(Token.objects.create(user=user).key)


async def main(kind: str, count: int) -> None:
    from asgiref.sync import sync_to_async

    from tasklight.asgi import application

    method, path, body, expected = KINDS[kind]
    token = await sync_to_async(user_with_tasks)()
    for n in range(WARM_UP + count):
        status = await request(application, token, method, path, body)
        if status != expected:
            raise SystemExit(f"{method} {path} answered {status}, not {expected} (request {n + 1})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
