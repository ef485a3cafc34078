"""The JSON auth API: sign-up, log-in, log-out, me, token (DESIGN.md §4)."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_signup_creates_the_account_and_signs_in(anonymous: APIClient) -> None:
    response = anonymous.post("/api/auth/signup/", {"username": "carol", "password": PASSWORD}, format="json")
    assert response.status_code == 201
    carol = User.objects.get(username="carol")
    assert response.json() == {"id": carol.id, "username": "carol"}
    assert anonymous.get("/api/auth/me/").json() == {"id": carol.id, "username": "carol"}


# Full-width letters: NFKC makes them "Alice" and "alice".
@pytest.mark.parametrize("username", ["Alice", "\uff21lice", "\uff41\uff4c\uff49\uff43\uff45"])
def test_signup_refuses_a_duplicate_username(anonymous: APIClient, alice: User, username: str) -> None:
    response = anonymous.post("/api/auth/signup/", {"username": username, "password": PASSWORD}, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["fields"]["username"] == ["A user with that username already exists."]
    assert User.objects.count() == 1


@pytest.mark.parametrize("password", ["short", "password123", "12345678901", "carol-the-user"])
def test_signup_refuses_a_weak_password(anonymous: APIClient, password: str) -> None:
    response = anonymous.post("/api/auth/signup/", {"username": "carol-the-user", "password": password}, format="json")
    error = assert_error(response, 400, "invalid")
    assert error["fields"]["password"]
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "carol"},
        {"username": "", "password": PASSWORD},
        {"username": "a b!", "password": PASSWORD},
        {"username": 6469693230, "password": PASSWORD},
    ],
)
def test_signup_refuses_bad_input_with_field_errors(anonymous: APIClient, body: dict) -> None:
    error = assert_error(anonymous.post("/api/auth/signup/", body, format="json"), 400, "invalid")
    assert error["fields"]
    assert not User.objects.exists()


def test_signup_refuses_malformed_json(anonymous: APIClient) -> None:
    response = anonymous.post("/api/auth/signup/", "{not json", content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert not User.objects.exists()


def test_login_with_the_right_password_starts_a_session(anonymous: APIClient, alice: User) -> None:
    response = anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert response.json() == {"id": alice.id, "username": "alice"}
    assert "sessionid" in response.cookies
    assert anonymous.get("/api/auth/me/").json()["username"] == "alice"


def test_login_with_a_wrong_password_is_refused(anonymous: APIClient, alice: User) -> None:
    response = anonymous.post("/api/auth/login/", {"username": "alice", "password": "wrong-password"}, format="json")
    assert_error(response, 400, "invalid")
    assert "sessionid" not in response.cookies
    assert anonymous.get("/api/auth/me/").status_code in (401, 403)


def test_logout_ends_the_session(anonymous: APIClient, alice: User) -> None:
    anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json")
    csrf = anonymous.cookies["csrftoken"].value
    assert anonymous.post("/api/auth/logout/", HTTP_X_CSRFTOKEN=csrf).status_code == 204
    assert anonymous.get("/api/auth/me/").status_code in (401, 403)


def test_logout_with_a_session_needs_the_csrf_token(anonymous: APIClient, alice: User) -> None:
    anonymous.post("/api/auth/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert_error(anonymous.post("/api/auth/logout/"), 403)
    assert anonymous.get("/api/auth/me/").status_code == 200


def test_me_refuses_an_anonymous_client(anonymous: APIClient) -> None:
    response = anonymous.get("/api/auth/me/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


def test_token_authenticates_scripts_without_cookies_or_csrf(alice: User) -> None:
    anonymous = APIClient(enforce_csrf_checks=True)
    response = anonymous.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=alice).key == token
    script = APIClient(enforce_csrf_checks=True)
    script.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert script.get("/api/auth/me/").json()["username"] == "alice"
    created = script.post("/api/tasks/", {"kind": "simulate", "params": {"seconds": 0}}, format="json")
    assert created.status_code == 202


def test_token_with_a_wrong_password_is_refused(anonymous: APIClient, alice: User) -> None:
    response = anonymous.post("/api/auth/token/", {"username": "alice", "password": "nope-nope"}, format="json")
    assert_error(response, 400, "invalid")
    assert not Token.objects.exists()


def test_a_bad_token_is_refused_even_with_a_valid_session(alice: User) -> None:
    client = APIClient()
    client.force_login(alice)
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.get("/api/auth/me/"), 401, "authentication_failed")


# --- Cached token authentication (accounts/authentication.py) ---------------


def token_client(user: User) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_a_cached_token_needs_no_query(alice: User) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    script = token_client(alice)
    assert script.get("/api/auth/me/").status_code == 200  # reads the token, caches it
    with CaptureQueriesContext(connection) as queries:
        assert script.get("/api/auth/me/").json()["username"] == "alice"
    assert not [query for query in queries if "authtoken_token" in query["sql"]], queries.captured_queries


def test_a_revoked_token_is_refused_at_once(alice: User) -> None:
    script = token_client(alice)
    assert script.get("/api/auth/me/").status_code == 200
    assert script.delete("/api/auth/token/").status_code == 204
    assert_error(script.get("/api/auth/me/"), 401, "authentication_failed")


def test_a_deactivated_user_is_refused_at_once(alice: User) -> None:
    script = token_client(alice)
    assert script.get("/api/auth/me/").status_code == 200
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert_error(script.get("/api/auth/me/"), 401, "authentication_failed")


def test_a_deleted_user_is_refused_at_once(alice: User) -> None:
    script = token_client(alice)
    assert script.get("/api/auth/me/").status_code == 200
    alice.delete()
    assert_error(script.get("/api/auth/me/"), 401, "authentication_failed")


def test_a_token_of_another_user_still_means_that_user(alice: User) -> None:
    bob = User.objects.create_user("bob", password=PASSWORD)
    alices, bobs = token_client(alice), token_client(bob)
    for _ in range(2):  # the second round from the cache
        assert alices.get("/api/auth/me/").json()["username"] == "alice"
        assert bobs.get("/api/auth/me/").json()["username"] == "bob"


def test_without_the_cache_tokens_are_read_from_the_database(alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """And the cache is not asked again for a while: each lookup waited out
    a Redis that did not answer, one after another on a web process's one
    thread for socket handshakes (tests/test_layer_outage.py)."""
    from django.core.cache import cache

    from accounts import authentication

    asked = []

    def down(*args: object, **kwargs: object) -> None:
        asked.append(args)
        raise ConnectionError("Redis is away")

    now = [1000.0]
    monkeypatch.setattr(authentication.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(authentication, "_cache_skipped_until", 0.0)  # and back to it after the test
    script = token_client(alice)
    monkeypatch.setattr(cache, "get", down)
    monkeypatch.setattr(cache, "set", down)
    for _ in range(3):
        assert script.get("/api/auth/me/").json()["username"] == "alice"
    assert len(asked) == 1
    now[0] += authentication.CACHE_SKIP_SECONDS
    assert script.get("/api/auth/me/").json()["username"] == "alice"
    assert len(asked) == 2


def test_the_cache_holds_no_password_hash(alice: User) -> None:
    import pickle

    from django.core.cache import cache

    from accounts.authentication import cache_key

    script = token_client(alice)
    assert script.get("/api/auth/me/").status_code == 200
    key = Token.objects.get(user=alice).key
    cached = cache.get(cache_key(key))
    assert cached is not None and cached.user.username == "alice"
    assert alice.password.encode() not in pickle.dumps(cached)
    assert cached.user.password == alice.password  # loaded on demand, from the database


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["deactivate", "revoke"])
def test_a_request_racing_the_change_does_not_cache_the_old_token(alice: User, change: str) -> None:
    """The cache entry was dropped when the change was made, inside its
    transaction: a request in between (another thread or web process) read
    the row as committed still, cached it, and the token worked on for
    TOKEN_CACHE_SECONDS. It is dropped again once the change commits."""
    from django.db import connections, transaction

    from accounts.authentication import CachedTokenAuthentication

    key = Token.objects.create(user=alice).key

    def racing_request() -> None:
        try:
            CachedTokenAuthentication().authenticate_credentials(key)  # caches what is committed
        finally:
            connections.close_all()

    with transaction.atomic():
        if change == "deactivate":
            alice.is_active = False
            alice.save()
        else:
            Token.objects.filter(key=key).delete()
        racer = threading.Thread(target=racing_request)
        racer.start()
        racer.join(10)
    assert APIClient(HTTP_AUTHORIZATION=f"Token {key}").get("/api/auth/me/").status_code == 401


@pytest.fixture
def redis_away(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The token cache's drops fail while ``redis_away[0]`` is true, in
    every thread (the retry thread's too, which tries again every 10 ms);
    this test's owed drops are its own."""
    from django.core.cache import cache
    from redis.exceptions import ConnectionError as RedisConnectionError

    from accounts import authentication

    away = [False]

    class Cache:
        def __getattr__(self, name: str) -> object:
            return getattr(cache, name)

        def delete_many(self, names: list[str]) -> None:
            if away[0]:
                raise RedisConnectionError("Redis is away")
            cache.delete_many(names)

    monkeypatch.setattr(authentication, "cache", Cache())
    monkeypatch.setattr(authentication, "DROP_RETRY_SECONDS", 0.01, raising=False)
    monkeypatch.setattr(authentication, "_undropped", {}, raising=False)
    return away


def test_a_drop_that_fails_once_the_change_committed_is_tried_again(
    alice: User, redis_away: list[bool], django_capture_on_commit_callbacks
) -> None:
    """The drop after the commit raised: the change stood, its request
    answered 503, and the entry that a request racing the change had cached
    (another web process's) was served for TOKEN_CACHE_SECONDS."""
    from django.core.cache import cache

    from accounts.authentication import cache_key

    from .stack import wait_for

    script = token_client(alice)
    key = Token.objects.get(user=alice).key
    assert script.get("/api/auth/me/").status_code == 200
    as_before = cache.get(cache_key(key))
    with django_capture_on_commit_callbacks() as after_commit:
        alice.is_active = False
        alice.save(update_fields=["is_active"])  # drops the entry
    cache.set(cache_key(key), as_before)  # a racing request caches the row as it was
    redis_away[0] = True
    for callback in after_commit:
        callback()  # the change has committed: nothing raised
    # This process refuses the token at once; the others once Redis takes the drop.
    assert_error(script.get("/api/auth/me/"), 401, "authentication_failed")
    assert cache.get(cache_key(key)) is not None
    redis_away[0] = False
    wait_for(lambda: cache.get(cache_key(key)) is None, timeout=10, what="the owed drop")


@pytest.mark.django_db(transaction=True)
def test_a_change_saved_outside_a_transaction_stands_and_its_drop_is_owed(alice: User, redis_away: list[bool]) -> None:
    """Saved outside a transaction (a shell, a script), the user is changed
    before the signal that drops the entry: the failed drop raised after the
    change had been made."""
    from django.core.cache import cache

    from accounts.authentication import cache_key

    from .stack import wait_for

    script = token_client(alice)
    key = Token.objects.get(user=alice).key
    assert script.get("/api/auth/me/").status_code == 200
    redis_away[0] = True
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert not User.objects.get(pk=alice.pk).is_active
    assert_error(script.get("/api/auth/me/"), 401, "authentication_failed")
    redis_away[0] = False
    wait_for(lambda: cache.get(cache_key(key)) is None, timeout=10, what="the owed drop")


def test_what_is_owed_is_bounded(redis_away: list[bool], monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Past MAX_UNDROPPED the oldest owed drops are given up, saying so."""
    import logging

    from accounts import authentication

    monkeypatch.setattr(authentication, "MAX_UNDROPPED", 3)
    redis_away[0] = True
    with caplog.at_level(logging.WARNING, logger="accounts.authentication"):
        authentication._drop([f"name-{n}" for n in range(5)])
    assert list(authentication._undropped) == ["name-2", "name-3", "name-4"]
    assert [record.levelname for record in caplog.records] == ["WARNING", "ERROR"]
    assert "gave up 2 undropped token entries" in caplog.records[1].getMessage()
