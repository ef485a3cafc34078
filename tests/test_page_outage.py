"""Pages while PostgreSQL is away: the 503 page with Retry-After, a WARNING
and not an ERROR with a traceback, within the pool's wait for a connection,
and served again once it is back. The database "goes down" behind a TCP
proxy of the test's own (tests/proxy.py): the machine's PostgreSQL keeps
serving the other suites."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from .proxy import TcpProxy
from .stack import PASSWORD, Account, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

# A page waits up to the pool's timeout (10 s, settings.py) for a connection.
POOL_TIMEOUT = 10
SLACK = 5


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_pages_answer_the_503_page_while_postgresql_is_away_and_serve_again_once_it_is_back(private_stack) -> None:
    from django.db import connection

    database = connection.settings_dict
    with TcpProxy(database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432)) as proxy:
        running = private_stack(
            DATABASE_URL=proxy.url_for(
                f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
            ),
            LOG_FORMAT="json",
        )
        try:
            check_pages(running, proxy)
        except BaseException:
            print(running.logs())  # pytest shows it with the failure
            raise


def check_pages(running: Any, proxy: TcpProxy) -> None:
    alice = Account.sign_up(running.base_url)
    timeout = POOL_TIMEOUT + 3 * SLACK
    signed_in = httpx.Client(base_url=running.base_url, timeout=timeout)
    form = {"csrfmiddlewaretoken": csrf_of(signed_in.get("/login/")), "username": alice.username, "password": PASSWORD}
    assert signed_in.post("/login/", data=form).status_code == 302
    assert signed_in.get("/").status_code == 200
    signed_out = httpx.Client(base_url=running.base_url, timeout=timeout)
    log_in = {
        "csrfmiddlewaretoken": csrf_of(signed_out.get("/login/")),
        "username": alice.username,
        "password": PASSWORD,
    }
    password = f"pw-{uuid.uuid4().hex}"
    sign_up = {
        "csrfmiddlewaretoken": csrf_of(signed_out.get("/signup/")),
        "username": f"bob-{uuid.uuid4().hex[:8]}",
        "password1": password,
        "password2": password,
    }
    assert proxy.forwarded > 0

    # What needs the database: the signed-in user's session, the log-in's
    # credentials, the sign-up's new user, the admin, the log-out.
    needs_the_database: dict[str, Callable[[], httpx.Response]] = {
        "home, signed in": lambda: signed_in.get("/"),
        "about, signed in": lambda: signed_in.get("/about/"),
        "admin, signed in": lambda: signed_in.get("/admin/"),
        "log-out": lambda: signed_in.post("/logout/", data={"csrfmiddlewaretoken": signed_in.cookies["csrftoken"]}),
        "log-in": lambda: signed_out.post("/login/", data=log_in),
        "sign-up": lambda: signed_out.post("/signup/", data=sign_up),
    }
    # What does not: served as ever.
    needs_nothing: dict[str, Callable[[], httpx.Response]] = {
        "home, signed out": lambda: signed_out.get("/"),
        "log-in page": lambda: signed_out.get("/login/"),
        "sign-up page": lambda: signed_out.get("/signup/"),
        "about, signed out": lambda: signed_out.get("/about/"),
        "admin, signed out": lambda: signed_out.get("/admin/"),
    }
    proxy.pause()
    try:
        with ThreadPoolExecutor(max_workers=len(needs_the_database) + len(needs_nothing)) as clients:
            down = dict(zip(needs_the_database, clients.map(timed, needs_the_database.values()), strict=True))
            served = dict(zip(needs_nothing, clients.map(timed, needs_nothing.values()), strict=True))
    finally:
        proxy.resume()
    for name, (response, waited) in down.items():
        assert (name, response.status_code, response.headers.get("Retry-After")) == (name, 503, "5"), response.text
        assert "Back in a moment" in response.text, name
        # Who is signed in cannot be read: neither signed-out links nor the account's.
        assert 'href="/login/"' not in response.text and 'href="/signup/"' not in response.text, name
        assert 'data-testid="nav-username"' not in response.text, name
        assert waited < POOL_TIMEOUT + SLACK, f"{name} waited {waited:.1f} s"
    for name, (response, waited) in served.items():
        assert (name, response.status_code) == (name, 302 if name.startswith("admin") else 200)
        assert waited < POOL_TIMEOUT + SLACK, f"{name} waited {waited:.1f} s"

    # One WARNING of Tasklight's per 503; Django's line for them one WARNING
    # (a minute), with no traceback; no ERROR at all.
    lines = [json.loads(line) for line in running.web.log().splitlines() if line.startswith("{")]
    assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
    ours = [line["message"] for line in lines if line["logger"] in ("tasklight.errors", "tasklight.middleware")]
    assert len(ours) == len(down) and all(m.startswith("database_unavailable: ") for m in ours), ours
    from_django = [line for line in lines if line["logger"] == "django.request"]
    assert len(from_django) == 1, from_django
    assert from_django[0]["level"] == "WARNING" and "exc_info" not in from_django[0], from_django
    assert from_django[0]["message"].endswith(": answered 503 database_unavailable, a dependency being down")

    # Back: served again, the same session still signed in, without a restart.
    wait_for(lambda: signed_in.get("/").status_code == 200, timeout=30, what="the home page with the database back")
    assert alice.username in signed_in.get("/").text
    assert signed_out.post("/login/", data=log_in).status_code == 302
    assert running.web.popen.poll() is None
