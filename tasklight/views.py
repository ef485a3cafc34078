from __future__ import annotations

from dataclasses import asdict

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .health import check_all, check_workers


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving; nothing else is checked."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    parts = check_all()
    down = [part.name for part in parts if not part.ok]
    body = {
        "status": "ok" if not down else "unavailable",
        "down": down,
        "parts": [asdict(part) for part in parts],
    }
    return JsonResponse(body, status=503 if down else 200)


def about(request: HttpRequest) -> HttpResponse:
    workers, alive = check_workers()
    return render(request, "about.html", {"parts": [*check_all(), workers], "workers": alive})
