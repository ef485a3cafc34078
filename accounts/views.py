"""Sign-up, log-in and log-out pages (Django's own forms and views)."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import login
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

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


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """The admin's log-in form (staff only), under the same limit: its own
    page was a way around it, for the accounts most worth guessing."""


def safe_next(request: HttpRequest) -> str:
    """Where to go once signed in: ``next`` if it is a path of this site (as
    Django's LoginView checks it), else "". A path: redirect() would take
    "whatever" for the name of a view (a 500 when there is none)."""
    target = str(request.POST.get("next") or request.GET.get("next") or "")
    allowed = url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure())
    return target if allowed and target.startswith("/") else ""


def signup(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url or "home")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    context = {"form": form, "next": next_url}
    if request.method == "POST":
        address = str(request.META.get("REMOTE_ADDR") or "unknown")
        if throttles.signup_wait(address=address) is not None:
            form.add_error(None, "Too many sign-ups from this address; try again later.")
            return render(request, "registration/signup.html", context, status=429)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(next_url or "home")
    return render(request, "registration/signup.html", context)
