"""Account writes: sign-up, API tokens, deleting an account, and deleting
expired sessions."""

from __future__ import annotations

from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tasklight import retention

from .sessions import SessionStore


class SignupError(Exception):
    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("sign-up refused")
        self.fields = fields


def create_account(*, username: str, password: str) -> User:
    """Creates a user after Django's username and password validators agree.
    The name is checked as it is stored, NFKC-normalised: a full-width "RITA"
    is "RITA", taken if "rita" is."""
    username = User.normalize_username(username)
    candidate = User(username=username)
    fields: dict[str, list[str]] = {}
    try:
        candidate.clean_fields(exclude=["password"])
    except ValidationError as exc:
        fields.update({name: [str(m) for m in messages] for name, messages in exc.message_dict.items()})
    if "username" not in fields and User.objects.filter(username__iexact=username).exists():
        fields["username"] = ["A user with that username already exists."]
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        fields["password"] = [str(message) for message in exc.messages]
    if fields:
        raise SignupError(fields)
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, password=password)
    except IntegrityError:
        # Two sign-ups raced for the same name; the loser hears what it would have.
        raise SignupError({"username": ["A user with that username already exists."]}) from None


def issue_token(*, user: User) -> str:
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


def revoke_token(*, user: User) -> None:
    Token.objects.filter(user=user).delete()


def delete_accounts(*, users: QuerySet[User]) -> int:
    """Deletes these users with all that is theirs (the admin's user delete
    and its "delete selected users" action call this): their tasks (a running one is stopped by its worker's watchdog, a
    queued one never starts), events, token and sessions; their sockets
    close once this commits (live/signals.py). The number of users deleted."""
    with transaction.atomic():
        user_ids = set(users.values_list("pk", flat=True))
        _delete_sessions(user_ids)
        _, per_model = User.objects.filter(pk__in=user_ids).delete()
        return per_model.get(User._meta.label, 0)


def _delete_sessions(user_ids: set[int]) -> None:
    """A session names its user only inside its signed data: each unexpired
    one is read (an expired one signs no one in). A bare ``User.delete()``
    leaves them until they expire, holding the id of no one."""
    if not user_ids:
        return
    store = SessionStore()
    session_model = store.get_model_class()
    wanted = {str(pk) for pk in user_ids}  # as login() stores it
    theirs = [
        key
        for key, data in session_model.objects.filter(expire_date__gt=timezone.now())
        .values_list("session_key", "session_data")
        .iterator(chunk_size=2000)
        if str(store.decode(data).get(SESSION_KEY)) in wanted
    ]
    session_model.objects.filter(session_key__in=theirs).delete()


def delete_expired_sessions(*, batch: int = retention.BATCH) -> int:
    """Deletes the sessions past their expiry, in batches; returns how many.
    Each log-in makes a row (a browser's, and each script that signs in over
    the JSON API instead of using a token) that outlives its expiry until
    deleted: Django leaves that to ``clearsessions`` run by cron, which the
    Procfile has none of, so every worker's cleanup does it (and
    ``clearsessions`` comes here too). An expired session signs no one in,
    and its sockets closed when it expired (docs/events.md)."""
    expired = SessionStore.get_model_class().objects.filter(expire_date__lt=timezone.now())
    return retention.delete_in_batches(expired, batch=batch)
