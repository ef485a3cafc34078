"""API tokens as the admin shows them: by their holder, never by the key."""

from __future__ import annotations

from rest_framework.authtoken.models import TokenProxy


class ApiToken(TokenProxy):
    """DRF's Token, named by its user: DRF's own admin titles its pages and
    records its log entries with ``str(token)``, the key itself. As DRF's
    TokenProxy, its ``pk`` is its user's id, so no admin URL holds the key."""

    class Meta:
        proxy = True
        verbose_name = "API token"
        verbose_name_plural = "API tokens"

    def __str__(self) -> str:
        return f"{self.user}'s API token"
