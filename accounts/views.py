"""Sign-up, log-in and log-out pages (Django's own forms and views)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import login
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from . import throttles


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's log-in form, with the API's limit on failed attempts."""

    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        address = str(self.request.META.get("REMOTE_ADDR") or "unknown") if self.request else "unknown"
        if throttles.login_attempt(username=username, address=address) is not None:
            raise ValidationError("Too many failed log-ins; try again in a few minutes.", code="throttled")
        cleaned = super().clean()  # a failure stays counted
        # With a field left empty Django checks no credentials and raises
        # nothing: only a user found is a success.
        if self.get_user() is not None:
            throttles.login_succeeded(username=username, address=address)
        return cleaned


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST":
        address = str(request.META.get("REMOTE_ADDR") or "unknown")
        if throttles.signup_wait(address=address) is not None:
            form.add_error(None, "Too many sign-ups from this address; try again later.")
            return render(request, "registration/signup.html", {"form": form}, status=429)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})
