"""Under ASGI the whole middleware chain runs in sync mode, in one thread:
no async-mode MiddlewareMixin hopping to a thread and back for each
process_request and process_response (settings.MIDDLEWARE, docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.utils.deprecation import MiddlewareMixin


def middleware_instances(handler: Any) -> list[Any]:
    found: list[Any] = []
    seen: set[int] = set()
    pending = [handler._middleware_chain]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MiddlewareMixin):
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


def test_every_django_middleware_runs_in_sync_mode_under_asgi() -> None:
    handler = ASGIHandler()
    mixins = middleware_instances(handler)
    assert len(mixins) >= 6, [type(m).__name__ for m in mixins]  # Security, CSP, sessions, CSRF, auth, ...
    in_async_mode = [type(m).__name__ for m in mixins if m.async_mode]
    assert in_async_mode == []
