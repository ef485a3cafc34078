from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from workloads.tasks import cleanup


class Command(BaseCommand):
    help = (
        "Deletes events past EVENT_RETENTION_DAYS, idempotency keys older than 24 h and the embedded broker's"
        " delivered messages (workers do it hourly)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        events, keys, messages = cleanup()
        self.stdout.write(
            f"deleted {events} expired event(s), {keys} idempotency key(s) and {messages} delivered broker message(s)"
        )
