"""Under ASGI a request enters its thread once, a reused one: the middleware
chain and the view run there together, in sync mode (tasklight/asgi_handler.py,
docs/benchmarks.md). Django's own ASGIHandler would build an async chain that
crosses between the event loop and a thread three times each way."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, sync_to_async
from channels.testing import HttpCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.utils.deprecation import MiddlewareMixin


def chain_parts(handler: Any) -> list[Any]:
    """Everything reachable from the handler's middleware chain."""
    found: list[Any] = []
    seen: set[int] = set()
    pending = [handler._middleware_chain]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        # convert_exception_to_response and async_to_sync wrap the next one.
        for attribute in ("get_response", "__wrapped__", "awaitable"):
            inner = getattr(current, attribute, None)
            if inner is not None:
                pending.append(inner)
        for cell in getattr(current, "__closure__", None) or ():
            try:
                pending.append(cell.cell_contents)
            except ValueError:
                continue
    return found


def test_the_served_chain_is_sync_with_no_crossing_inside() -> None:
    from tasklight.asgi import django_application

    parts = chain_parts(django_application)
    mixins = [part for part in parts if isinstance(part, MiddlewareMixin)]
    assert len(mixins) >= 6, [type(m).__name__ for m in mixins]  # Security, CSP, sessions, CSRF, auth, ...
    assert [type(m).__name__ for m in mixins if m.async_mode] == []
    assert not [part for part in parts if isinstance(part, AsyncToSync)]


def test_djangos_own_handler_would_cross_back_to_the_loop() -> None:
    # What the test above guards against: the async chain Django builds itself.
    assert [part for part in chain_parts(ASGIHandler()) if isinstance(part, AsyncToSync)]


@pytest.fixture
def view_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each /healthz view call (it builds its JsonResponse there)."""
    from tasklight import views

    threads: list[int] = []
    original_response = views.JsonResponse

    def recording_response(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original_response(*args, **kwargs)

    monkeypatch.setattr(views, "JsonResponse", recording_response)
    return threads


async def get_healthz() -> None:
    """GET /healthz through the served ASGI app; returns once the app has
    finished with the request (its thread given back)."""
    from tasklight.asgi import django_application

    communicator = HttpCommunicator(django_application, "GET", "/healthz", headers=[(b"host", b"127.0.0.1")])
    assert (await communicator.get_response(timeout=10))["status"] == 200
    await communicator.wait(timeout=10)


@pytest.mark.asyncio
async def test_middleware_and_view_run_in_one_thread_off_the_loop(
    monkeypatch: pytest.MonkeyPatch, view_threads: list[int]
) -> None:
    from tasklight import middleware

    middleware_threads: list[int] = []
    original_middleware = middleware.RequestIdMiddleware.__call__

    def recording_middleware(self: Any, request: Any) -> Any:
        middleware_threads.append(threading.get_ident())
        return original_middleware(self, request)

    monkeypatch.setattr(middleware.RequestIdMiddleware, "__call__", recording_middleware)
    await get_healthz()
    assert len(middleware_threads) == len(view_threads) == 1
    assert middleware_threads[0] == view_threads[0] != threading.get_ident()


@pytest.mark.asyncio
async def test_request_threads_are_reused(view_threads: list[int]) -> None:
    """Django starts a thread per request; ours come back to a free list, so
    per-thread caches (database wrapper, Celery's backend) stay warm."""
    for _ in range(3):
        await get_healthz()
    assert len(view_threads) == 3
    assert len(set(view_threads)) == 1, view_threads


@pytest.mark.asyncio
async def test_the_request_signals_run_in_the_requests_thread(
    monkeypatch: pytest.MonkeyPatch, view_threads: list[int]
) -> None:
    """request_started and request_finished (which hands the database
    connection back to the pool) run in the thread of the view, in the one
    crossing to it, not in crossings of their own."""
    from tasklight import asgi_handler

    threads: dict[str, int] = {}
    crossings: list[Any] = []

    def started(**kwargs: Any) -> None:
        threads["started"] = threading.get_ident()

    def finished(**kwargs: Any) -> None:
        threads["finished"] = threading.get_ident()

    def counting_sync_to_async(function: Any, **kwargs: Any) -> Any:
        crossings.append(function)
        return sync_to_async(function, **kwargs)

    monkeypatch.setattr(asgi_handler, "sync_to_async", counting_sync_to_async)
    request_started.connect(started)
    request_finished.connect(finished)
    try:
        await get_healthz()
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert len(crossings) == 1, crossings  # one crossing to the thread for the whole request
    threads["view"], *_ = view_threads
    assert set(threads) == {"started", "view", "finished"}
    assert len(set(threads.values())) == 1, threads
    assert threads["view"] != threading.get_ident()
