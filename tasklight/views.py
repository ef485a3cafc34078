from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from .errors import dependency_down
from .health import check_all, check_workers, unknown_workers


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving; nothing else is checked."""
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    parts = check_all()
    down = [part.name for part in parts if not part.ok]
    body = {
        "status": "ok" if not down else "unavailable",
        "down": down,
        # The backend's kind only: /readyz answers anyone who reaches it.
        "parts": [{"name": part.name, "backend": part.kind, "ok": part.ok, "detail": part.detail} for part in parts],
    }
    if down:
        dependency_down(request, "not_ready")  # a probe's every 503 was an ERROR line
    return JsonResponse(body, status=503 if down else 200)


def about(request: HttpRequest) -> HttpResponse:
    parts = check_all()
    database, layer = (next(part for part in parts if part.name == name) for name in ("database", "channel_layer"))
    # The workers are known from the database: while it is down, asking would
    # wait the pool's 10 s for a connection; before the release step, their
    # table may lack a column. Their marks in Redis are not looked for while
    # the channel layer's check failed (another wait, for nothing).
    workers, alive = check_workers(look_in_layer=layer.ok) if database.ok else (unknown_workers(database), [])
    return render(request, "about.html", {"parts": [*parts, workers], "workers": alive})
