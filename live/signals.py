"""Sockets live as long as the credential they were opened with: a log-out
(or a log-in as someone else in the same browser) ends the sockets of that
session, a revoked token those opened with it, a new
password those opened with any session, and a deactivated or deleted user
every one of theirs (closed with 4401, DESIGN.md §5). A session that merely
expires closes its sockets itself (live/consumers.py). Each is told over the
channel layer, on every web process, once the change has committed; once:
a message lost (Redis away) is made up for by each socket's own check of
its credential, every WS_CREDENTIAL_CHECK_SECONDS (live/consumers.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from tasklight.asgi_handler import call_after_response

from .events import ANY_SESSION, signed_out, user_group
from .publisher import publisher


def _tell_sockets(user_id: int, message: dict[str, Any]) -> None:
    # After the commit, and after the response of the request that made the
    # change (its new session cookie first: tasklight/asgi_handler.py).
    transaction.on_commit(lambda: call_after_response(lambda: publisher.push(user_group(user_id), message)))


def session_ended(*, user_id: int, session_key: str) -> None:
    """Called by the session store (accounts/sessions.py) as a session that
    held ``user_id`` is flushed: a log-out, or a log-in as someone else."""
    _tell_sockets(user_id, signed_out(session=session_key))


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any = None, **kwargs: Any) -> None:
    # logout() deletes the session only after this signal. Deleted now (its
    # sockets are told: session_ended), a page that reloads as its socket
    # closes finds it gone; else it could load signed in still and open a
    # socket again. logout()'s own flush then finds nothing to end.
    session: Any = getattr(request, "session", None)
    if session is not None:
        session.flush()


@receiver(post_delete, sender=Token)
def _token_revoked(sender: Any, instance: Token, **kwargs: Any) -> None:
    _tell_sockets(instance.user_id, signed_out(token=True))


@receiver(post_save, sender=User)
def _user_changed(sender: Any, instance: User, created: bool = False, **kwargs: Any) -> None:
    if created:
        return
    if not instance.is_active:
        _tell_sockets(instance.pk, signed_out(session=ANY_SESSION, token=True))
    elif getattr(instance, "_password", None) is not None:
        # A new password (set_password(), then save(), which clears _password
        # after this signal) ends every session (Django checks the session's
        # password hash on each request); tokens hold, as DRF has them.
        _tell_sockets(instance.pk, signed_out(session=ANY_SESSION))


@receiver(post_delete, sender=User)
def _user_deleted(sender: Any, instance: User, **kwargs: Any) -> None:
    _tell_sockets(instance.pk, signed_out(session=ANY_SESSION, token=True))
