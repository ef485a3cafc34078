"""Bad input, abuse and isolation at the HTTP door; deployment settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from live.models import Event
from workloads.models import Task

from .conftest import PASSWORD
from .stack import ROOT
from .test_auth_api import assert_error
from .test_tasks_api import queue

pytestmark = pytest.mark.django_db


def test_production_settings_pass_check_deploy() -> None:
    env = {
        **os.environ,
        "DEBUG": "0",
        "HTTPS": "1",
        "SECRET_KEY": "k3y-" + "x7Gq2pL9vR4mT8wZ" * 4,
        "ALLOWED_HOSTS": "tasklight.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize("path", ["/", "/about/", "/login/", "/signup/"])
def test_pages_carry_a_strict_csp_and_no_inline_script(client: Client, alice: User, path: str) -> None:
    client.force_login(alice)
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    for tag in re.findall(rb"<script\b[^>]*>", response.content):
        assert b" src=" in tag or b'type="application/json"' in tag, tag
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def test_session_cookie_flags(anonymous: APIClient, alice: User, settings) -> None:
    settings.SESSION_COOKIE_SECURE = True
    response = anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json")
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["secure"] is True


def test_hsts_is_sent_behind_tls(client: Client, settings) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    response = client.get("/healthz", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


def test_repeated_failed_logins_are_throttled_per_account(anonymous: APIClient, alice: User) -> None:
    for _ in range(5):
        response = anonymous.post("/api/auth/login/", {"username": "alice", "password": "wrong-1"}, format="json")
        assert response.status_code == 400
    blocked = anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert_error(blocked, 429, "throttled")
    assert int(blocked["Retry-After"]) > 0
    assert_error(anonymous.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json"), 429)
    # Another account from the same address is not blocked yet.
    User.objects.create_user("carol", password=PASSWORD)
    assert (
        anonymous.post("/api/auth/login/", {"username": "carol", "password": PASSWORD}, format="json").status_code
        == 200
    )


def test_failed_logins_are_throttled_per_address(anonymous: APIClient, alice: User) -> None:
    for n in range(20):
        anonymous.post("/api/auth/login/", {"username": f"nobody-{n}", "password": "x"}, format="json")
    assert_error(anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json"), 429)


def test_the_login_page_is_throttled_too(client: Client, alice: User) -> None:
    for _ in range(5):
        client.post("/login/", {"username": "alice", "password": "wrong-1"})
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert b"Too many failed log-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_look_alike_spellings_of_a_name_share_its_failures(client: Client, alice: User) -> None:
    """The log-in form NFKC-normalises the name it looks up: alice with a
    full-width a signs in as alice, so it must count as alice too."""
    for n, spelling in enumerate(["alice", "\uff41lice", "\u24d0lice", "ALICE", "\uff21\uff2c\uff29\uff23\uff25"]):
        client.post("/login/", {"username": spelling, "password": f"wrong-{n}"})
    response = client.post("/login/", {"username": "\uff41lice", "password": PASSWORD})
    assert b"Too many failed log-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_the_admins_log_in_page_is_throttled_too(client: Client, alice: User) -> None:
    """Staff accounts are the ones most worth guessing: the admin's own
    log-in page was a way around the limit."""
    alice.is_staff = True
    alice.save()
    for n in range(5):
        client.post("/admin/login/", {"username": "alice", "password": f"wrong-{n}"})
    response = client.post("/admin/login/?next=/admin/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert b"Too many failed log-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_a_log_in_page_post_without_a_password_does_not_reset_the_count(client: Client, alice: User) -> None:
    """Django's form checks no credentials when a field is empty: that is no
    successful log-in, and must not clear the account's failures."""
    for n in range(4):
        client.post("/login/", {"username": "alice", "password": f"wrong-{n}"})
    client.post("/login/", {"username": "alice", "password": ""})
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert b"Too many failed log-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_sign_ups_are_limited_per_address(anonymous: APIClient, settings) -> None:
    settings.SIGNUP_RATE_LIMIT = "2/hour"
    for n in range(2):
        assert (
            anonymous.post(
                "/api/auth/signup/", {"username": f"new-{n}", "password": PASSWORD}, format="json"
            ).status_code
            == 201
        )
        anonymous.cookies.clear()
    assert_error(anonymous.post("/api/auth/signup/", {"username": "new-3", "password": PASSWORD}, format="json"), 429)
    assert User.objects.count() == 2


def test_a_revoked_token_stops_working(alice: User) -> None:
    script = APIClient()
    token = script.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json").json()["token"]
    script.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert script.delete("/api/auth/token/").status_code == 204
    assert_error(script.get("/api/auth/me/"), 401)
    fresh = APIClient().post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert fresh.json()["token"] != token


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/tasks/"),
        ("post", "/api/tasks/{id}/cancel/"),
        ("post", "/api/tasks/{id}/retry/"),
        ("post", "/api/notifications/read/"),
        ("post", "/api/auth/logout/"),
        ("delete", "/api/auth/token/"),
    ],
)
def test_every_session_state_change_needs_the_csrf_token(alice: User, method: str, path: str) -> None:
    task = Task.objects.create(owner=alice, kind="simulate", params={"seconds": 1, "fail": False})
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    response = getattr(client, method)(path.format(id=task.id), {}, format="json")
    assert_error(response, 403)
    assert Task.objects.count() == 1
    assert Task.objects.get().status == "queued"


def test_bob_can_neither_read_change_cancel_retry_nor_list_alices_tasks(
    alice_api: APIClient, bob_api: APIClient, alice: User
) -> None:
    task = queue(alice_api).json()
    finished = queue(alice_api).json()
    Task.objects.filter(pk=finished["id"]).update(status="succeeded", finished_at=timezone.now())
    for method, path in [
        ("get", f"/api/tasks/{task['id']}/"),
        ("post", f"/api/tasks/{task['id']}/cancel/"),
        ("post", f"/api/tasks/{finished['id']}/retry/"),
        ("put", f"/api/tasks/{task['id']}/"),
        ("delete", f"/api/tasks/{task['id']}/"),
    ]:
        response = getattr(bob_api, method)(path, {}, format="json")
        assert response.status_code in (404, 405), (method, path, response.status_code)
        assert response.status_code != 403
    assert bob_api.get("/api/tasks/").json()["results"] == []
    assert bob_api.get("/api/events/?after=0").json()["results"] == []
    assert bob_api.get("/api/notifications/").json()["results"] == []
    # Bob marking "everything" read touches only his own inbox.
    bob_api.post("/api/notifications/read/", {"up_to": 10**9}, format="json")
    assert alice_api.get("/api/notifications/").json()["read_up_to"] == 0
    assert Task.objects.filter(status="queued").count() == 1
    assert Event.objects.filter(user=alice).count() == 2


@pytest.mark.parametrize(
    ("next_url", "lands_on"),
    [
        ("/about/", "/about/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("", "/"),
        ("whatever", "/"),  # redirect() took it for a view's name: a 500
        ("about", "/"),
    ],
)
def test_sign_up_goes_to_next_when_it_is_a_path_of_this_site(client: Client, next_url: str, lands_on: str) -> None:
    page = client.get("/signup/", {"next": next_url})
    assert (f'name="next" value="{next_url}"' in page.content.decode()) == (lands_on != "/")
    body = {"username": "carol", "password1": PASSWORD, "password2": PASSWORD, "next": next_url}
    response = client.post("/signup/", body)
    assert response.status_code == 302 and response["Location"] == lands_on
    assert client.get("/api/auth/me/").json()["username"] == "carol"
    assert client.get("/signup/", {"next": next_url})["Location"] == lands_on  # signed in already
