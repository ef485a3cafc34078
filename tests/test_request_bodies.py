"""Request bodies as a real server receives them (uvicorn, the web process of
the session's stack): chunked ones, with no Content-Length, and ones over
API_MAX_BODY_BYTES (4 MiB)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from workloads.models import Task

from .stack import Account

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

LIMIT = 4 * 1024 * 1024


def chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_is_read(stack: Any) -> None:
    alice = Account.sign_up(stack.base_url)
    body = json.dumps({"kind": "simulate", "params": {"seconds": 0}}).encode()
    headers = {"Content-Type": "application/json"}
    response = alice.http.post("/api/tasks/", content=chunked(body, size=7), headers=headers)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 202, response.text  # was a 400: "kind" required (read as empty)
    assert Task.objects.filter(pk=response.json()["id"]).exists()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_over_the_limit_is_a_413_however_it_is_framed(stack: Any, framing: str) -> None:
    alice = Account.sign_up(stack.base_url)
    body = json.dumps({"kind": "text_stats", "params": {"text": "x" * (LIMIT + 1000)}}).encode()
    content: Any = chunked(body) if framing == "chunked" else body
    response = alice.http.post("/api/tasks/", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert not Task.objects.filter(owner__username=alice.username).exists()
