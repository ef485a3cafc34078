"""Web processes whose SECRET_KEY differs: a session made on one is not
read by the other (its data is signed with the key), so a browser that the
proxy sends to either is signed in on one and out on the other. API tokens
do not depend on the key. SECRET_KEY_FALLBACKS lets a rotation roll without
signing anyone out (docs/operations.md#secret_key-on-every-process)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from .stack import PASSWORD, Account

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

OLD, NEW = "old-key-" + "o" * 50, "new-key-" + "n" * 50


def log_in_with_session(base_url: str, username: str) -> httpx.Client:
    browser = httpx.Client(base_url=base_url, timeout=10)
    response = browser.post("/api/auth/login/", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return browser


def me(browser: httpx.Client, base_url: str) -> int:
    return browser.get(f"{base_url}/api/auth/me/").status_code


def test_a_session_made_under_one_key_signs_out_on_a_process_with_another(private_stack: Any) -> None:
    private = {"CHANNEL_LAYER_PREFIX": f"tl-keys-{uuid.uuid4().hex[:8]}"}
    web1 = private_stack(SECRET_KEY=OLD, **private)
    web2 = private_stack(SECRET_KEY=NEW, **private)
    alice = Account.sign_up(web1.base_url)
    browser = log_in_with_session(web1.base_url, alice.username)
    assert me(browser, web1.base_url) == 200
    # Its data is signed: the other key cannot read it. Signed out there,
    # still signed in here, as the proxy picks one or the other.
    assert me(browser, web2.base_url) == 401
    assert me(browser, web1.base_url) == 200
    assert "Session data corrupted" in web2.web.log()  # Django's WARNING, the operator's only clue
    # Tokens are looked up, not signed: a script works on both.
    assert alice.http.get(f"{web2.base_url}/api/auth/me/").status_code == 200


def test_a_rotation_with_fallbacks_signs_no_one_out(private_stack: Any) -> None:
    """Both keys on every process, in either order, as a rotation rolls."""
    private = {"CHANNEL_LAYER_PREFIX": f"tl-keys-{uuid.uuid4().hex[:8]}"}
    old = private_stack(SECRET_KEY=OLD, SECRET_KEY_FALLBACKS=NEW, **private)
    new = private_stack(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=OLD, **private)
    alice = Account.sign_up(old.base_url)
    browser = log_in_with_session(old.base_url, alice.username)
    for base_url in [new.base_url, old.base_url, new.base_url, old.base_url]:
        assert me(browser, base_url) == 200, base_url
