"""A worker's readiness probe (docs/operations.md, "Health"): asks one worker,
over the broker, whether it can run tasks now, as its own housekeeper last
found (workloads/tasks.py ``worker_readiness``). Its liveness probe stays
``celery inspect ping``: a worker cut off from the database is not ready, but
restarting it would not bring the database back."""

from __future__ import annotations

import socket
from typing import Any

from celery.platforms import EX_UNAVAILABLE
from django.core.management.base import BaseCommand, CommandError, CommandParser

NOT_READY = 1


class Command(BaseCommand):
    help = (
        "Exits 0 if the worker answers over the broker and its last report to the database succeeded lately, "
        f"{NOT_READY} if it answers that it is not ready (and why), {EX_UNAVAILABLE} if it does not answer "
        "(as `celery inspect ping`)."
    )
    # A probe runs every few seconds: no system checks, no database.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-d",
            "--destination",
            default=f"celery@{socket.gethostname()}",
            help="The worker's node name (default: celery@ this machine's host name, Celery's own default).",
        )
        parser.add_argument(
            "-t", "--timeout", type=float, default=10.0, help="Seconds to wait for its answer (default 10)."
        )

    def handle(self, *args: Any, destination: str, timeout: float, **options: Any) -> None:
        from tasklight.celery import app

        try:
            replies = app.control.broadcast(
                "worker_readiness", destination=[destination], reply=True, timeout=timeout, limit=1
            )
        except Exception as exc:
            message = f"cannot ask {destination}: the broker is unreachable: {exc}"
            raise CommandError(message, returncode=EX_UNAVAILABLE) from None
        answer = next((reply[destination] for reply in replies or [] if destination in reply), None)
        if answer is None:
            raise CommandError(f"{destination} did not answer within {timeout:g} s", returncode=EX_UNAVAILABLE)
        if not isinstance(answer, dict) or "ready" not in answer:
            # A worker of a release without the command answers an error.
            raise CommandError(f"{destination} cannot tell: {answer}", returncode=EX_UNAVAILABLE)
        if not answer["ready"]:
            raise CommandError(f"{destination} is not ready: {answer['detail']}", returncode=NOT_READY)
        self.stdout.write(f"{destination}: ready ({answer['detail']})")
