from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from workloads.tasks import cleanup


class Command(BaseCommand):
    help = (
        "Deletes events past EVENT_RETENTION_DAYS, idempotency keys older than 24 h, expired sessions, the"
        " embedded broker's delivered messages and the reports of workers unseen for a day (workers do it hourly)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"deleted {cleanup()}")
