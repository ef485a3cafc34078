"""JSON auth API: sign-up, log-in, log-out, who-am-I and API tokens."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasklight.fields import StrictCharField
from tasklight.openapi import RATE_LIMITED

from . import services, throttles


class CredentialsSerializer(serializers.Serializer[dict[str, str]]):
    username = StrictCharField(max_length=150, trim_whitespace=False)
    password = StrictCharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class UserSerializer(serializers.Serializer[object]):
    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)


TokenSerializer = inline_serializer("Token", {"token": serializers.CharField()})


def _credentials(request: Request) -> dict[str, str]:
    serializer = CredentialsSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def client_address(request: Request) -> str:
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _authenticate(request: Request) -> User:
    """Checks credentials, with a limit on failures per account and per address."""
    credentials = _credentials(request)
    address = client_address(request)
    wait = throttles.login_attempt(username=credentials["username"], address=address)
    if wait is not None:
        raise Throttled(wait, detail="Too many failed log-ins; try again later.")
    user = authenticate(request._request, **credentials)
    if not isinstance(user, User):  # counted as a failure already
        raise ValidationError("The username or password is not correct.", code="invalid_credentials")
    throttles.login_succeeded(username=credentials["username"], address=address)
    return user


class AnonymousEndpoint(APIView):
    """No authentication, hence no CSRF: these are how one gets credentials."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]


class SignupView(AnonymousEndpoint):
    @extend_schema(request=CredentialsSerializer, responses={201: UserSerializer, 429: RATE_LIMITED})
    def post(self, request: Request) -> Response:
        wait = throttles.signup_wait(address=client_address(request))
        if wait is not None:
            raise Throttled(wait, detail="Too many sign-ups from this address; try again later.")
        credentials = _credentials(request)
        try:
            user = services.create_account(**credentials)
        except services.SignupError as exc:
            raise ValidationError(exc.fields) from None
        login(request._request, user, backend="django.contrib.auth.backends.ModelBackend")
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)


class LoginView(AnonymousEndpoint):
    @extend_schema(request=CredentialsSerializer, responses={200: UserSerializer, 429: RATE_LIMITED})
    def post(self, request: Request) -> Response:
        user = _authenticate(request)
        login(request._request, user)
        return Response(UserSerializer(user).data)


class TokenView(APIView):
    """POST: credentials in, the user's API token out. DELETE: revokes the
    token of the user making the request; the next POST issues a new one."""

    def _issuing(self) -> bool:
        # No request while drf-spectacular inspects the view for the schema.
        return getattr(self.request, "method", None) == "POST"

    def get_authenticators(self) -> list[Any]:
        return [] if self._issuing() else super().get_authenticators()

    def get_permissions(self) -> list[Any]:
        return [AllowAny()] if self._issuing() else list(super().get_permissions())

    @extend_schema(request=CredentialsSerializer, responses={200: TokenSerializer, 429: RATE_LIMITED})
    def post(self, request: Request) -> Response:
        user = _authenticate(request)
        return Response({"token": services.issue_token(user=user)})

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request) -> Response:
        services.revoke_token(user=request.user)  # type: ignore[arg-type]  # IsAuthenticated
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    @extend_schema(responses={200: UserSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)
