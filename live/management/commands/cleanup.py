from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from workloads.tasks import cleanup


class Command(BaseCommand):
    help = "Deletes events past EVENT_RETENTION_DAYS and idempotency keys older than 24 h (workers do it hourly)."

    def handle(self, *args: Any, **options: Any) -> None:
        events, keys = cleanup()
        self.stdout.write(f"deleted {events} expired event(s) and {keys} idempotency key(s)")
