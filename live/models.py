from __future__ import annotations

from django.conf import settings
from django.db import models


class EventStream(models.Model):
    """One row per user: the id of the user's newest event.

    Bumping it takes the row's lock, so a user's events commit in the order of
    their ids and the ids have no gaps: a consumer that sees id N+2 before N+1
    knows N+1 is already in the table.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="event_stream"
    )
    last_event_id = models.PositiveBigIntegerField(default=0)
    # The inbox: notifications (terminal events) up to this id are read.
    read_up_to = models.PositiveBigIntegerField(default=0, db_default=0)

    def __str__(self) -> str:
        return f"user {self.user_id}: last event {self.last_event_id}"


class Event(models.Model):
    """A stored lifecycle event; ``sequence`` is the id clients see."""

    # No index of its own: event_user_sequence starts with user.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="events", db_index=False)
    sequence = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=32)
    task = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "sequence"], name="event_user_sequence")]
        indexes = [models.Index(fields=["created_at"], name="event_created")]  # retention cleanup

    def __str__(self) -> str:
        return f"{self.kind} #{self.sequence} for user {self.user_id}"
