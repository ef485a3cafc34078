"""Account writes: sign-up and API tokens."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token


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
