"""A deactivated account's work stops: its queued tasks are cancelled and its
running ones asked to stop, as the owner's own cancel does (docs/lifecycle.md).
Deleting an account deletes its tasks; their workers stop them at their next
lease renewal (workloads/tasks.py CancelWatchdog)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from . import services
from .models import Task

logger = logging.getLogger(__name__)


@receiver(post_save, sender=User)
def _stop_the_work_of_a_deactivated_user(sender: Any, instance: User, created: bool = False, **kwargs: Any) -> None:
    if created or instance.is_active:
        return

    def cancel() -> None:
        changed = services.cancel_active(Task.objects.filter(owner=instance))
        if changed:
            logger.info(
                "user %s deactivated: %d of their task(s) cancelled or asked to stop", instance.pk, len(changed)
            )

    transaction.on_commit(cancel)
