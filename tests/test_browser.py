"""A person's journey in a real browser: Debian's Chromium, driven headless
by Playwright, against the real stack (uvicorn + worker on PostgreSQL,
RabbitMQ and Redis)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.contrib.sessions.models import Session
from django.utils import timezone
from playwright.sync_api import (
    APIResponse,
    Browser,
    BrowserContext,
    Page,
    Route,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from live.models import Event
from live.services import delete_expired_events
from workloads.models import Task

from .proxy import HttpProxyWithoutWebSockets, TcpProxy
from .stack import HTTP_TIMEOUT, PASSWORD, ROOT, Account, terminal_for, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

# What an expect() waits for unless told: Playwright's 5 s is short for a
# loaded CI machine (2 cores, a load average of 4 and more), where a page's
# socket or a row's change can take longer; still a bound. (test_accessibility
# runs in the same session and shares it.)
expect.set_options(timeout=15_000)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium reaches for Google's hosts and this machine refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does it)")
    # Playwright's sync API keeps an event loop in this thread, and Django
    # refuses sync database calls where a loop runs. The only such call here
    # is the test database's flush after each test, with the browser idle.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield browser
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture
def tabs(browser: Browser, tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium as a person has it: its pages are tabs of one window, and a
    tab behind another is hidden (``document.visibilityState``). Playwright's
    own launch emulates focus on every page, which keeps each one visible
    whatever is in front; this Chromium is started alone and driven over CDP
    with ``no_defaults``, which leaves the browser's own visibility be. Its
    first page is the first tab."""
    profile = tmp_path / "chromium-profile"
    own_launch = ["--headless", "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1200,800"]
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_ARGS, *own_launch, "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it chose
        port = wait_for(lambda: port_file.read_text().split("\n")[0].strip(), timeout=30, what="Chromium's port")
        over_cdp = browser.browser_type.connect_over_cdp(f"http://127.0.0.1:{port}", no_defaults=True)
        yield over_cdp.contexts[0]
        over_cdp.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


def wait_on_page(page: Page, check: Callable[[], object], *, what: str, timeout: float = 30) -> None:
    """``stack.wait_for``, waiting in the page instead of a sleep: Playwright
    runs its routes' and relays' handlers only while a call of the test's
    is in it."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting {timeout} s for {what}"
        page.wait_for_timeout(50)


def sign_up(page: Page) -> str:
    """Signs up through the sign-up page; returns the username."""
    username = f"visitor-{uuid.uuid4().hex[:8]}"
    page.fill("input[name=username]", username)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.locator("form button[type=submit], form input[type=submit]").last.click()
    expect(page.get_by_test_id("nav-username")).to_have_text(username)
    return username


def test_sign_up_queue_a_task_see_it_succeed_live_and_log_out(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/")
    page.get_by_role("link", name="Sign up").first.click()
    sign_up(page)
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")

    # Every navigation from here on would be a reload: there must be none.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    page.get_by_test_id("queue-task").click()
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    toast = page.get_by_test_id("notification")
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text("succeeded")
    assert navigations == []

    if os.environ.get("UPDATE_SCREENSHOT"):
        page.screenshot(path=str(ROOT / "docs" / "screenshot.png"))

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Log in").first).to_be_visible()
    expect(page.get_by_test_id("nav-username")).to_have_count(0)


def test_a_failing_task_shows_a_failure_toast(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)

    page.locator("input[name=seconds]").fill("0")
    page.locator("input[name=fail]").check()
    page.get_by_test_id("queue-task").click()
    expect(page.get_by_test_id("task-row").first).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(page.get_by_test_id("notification")).to_contain_text("Simulated failure")


def queue_from_the_form(page: Page) -> dict[str, Any]:
    """Clicks "Queue task"; returns the JSON the page sent."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/tasks/")) as sent:
        page.get_by_test_id("queue-task").click()
    body = sent.value.post_data_json
    assert isinstance(body, dict)
    return body


def test_the_form_renders_each_parameter_shape_with_its_default_and_sends_typed_json(stack: Any, page: Page) -> None:
    # tests/workloads_for_tests.py's export: a required short string, an enum
    # (a $ref), an optional enum, string and boolean whose default is null, a
    # one-value Literal (const), a boolean, bounded integers, an array and a
    # nested object. Before, the optional enum showed and sent its first value
    # (level 1, where the default is none), the optional string sent "" (which
    # its min_length refuses: a 400 on a field left alone), the optional
    # boolean was a checkbox that sent false, and the const a free-text box.
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    page.select_option("#workload-kind", "export")
    fields = page.locator("#param-fields")
    expect(fields.locator("[data-param]")).to_have_count(11)

    level = fields.locator("select[name=level]")
    expect(level.locator("option")).to_have_text(["\u2014", "1", "3", "9"])
    expect(level.locator("option:checked")).to_have_text("\u2014")
    expect(fields.locator("select[name=format] option:checked")).to_have_text("csv")
    expect(fields.locator("select[name=version] option")).to_have_text(["v2"])
    expect(fields.locator("input[name=dry_run]")).not_to_be_checked()
    notify = fields.locator("select[name=notify]")
    expect(notify.locator("option")).to_have_text(["\u2014", "true", "false"])
    expect(notify.locator("option:checked")).to_have_text("\u2014")
    batch = fields.locator("input[name=batch]")
    expect(batch).to_have_value("100")
    assert (batch.get_attribute("min"), batch.get_attribute("max"), batch.get_attribute("step")) == (
        "10",
        "10000",
        "10",
    )
    expect(fields.locator("input[name=limit]")).to_have_value("")
    expect(fields.locator("[name=note]")).to_have_value("")
    expect(fields.locator("[name=table]")).to_have_attribute("maxlength", "40")
    expect(fields.locator("[name=columns]")).to_have_value("[]")

    fields.locator("[name=table]").fill("users")
    body = queue_from_the_form(page)
    assert body == {
        "kind": "export",
        "params": {
            "table": "users",
            "format": "csv",
            "version": "v2",
            "dry_run": False,
            "batch": 100,
            "columns": [],
            "window": {"start": 0, "end": 30},
        },
    }
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    task = Task.objects.get(pk=str(row.get_attribute("data-task-id")))
    assert task.result == {**body["params"], "level": None, "note": None, "notify": None, "limit": None}

    level.select_option("9")
    fields.locator("select[name=format]").select_option("json")
    fields.locator("[name=note]").fill("nightly")
    fields.locator("input[name=dry_run]").check()
    notify.select_option("false")
    fields.locator("input[name=limit]").fill("500")
    fields.locator("[name=columns]").fill('["id", "name"]')
    fields.locator("[name=window]").fill('{"start": 7}')
    body = queue_from_the_form(page)
    assert body["params"] == {
        "table": "users",
        "format": "json",
        "level": 9,
        "version": "v2",
        "note": "nightly",
        "dry_run": True,
        "notify": False,
        "batch": 100,
        "limit": 500,
        "columns": ["id", "name"],
        "window": {"start": 7},
    }
    expect(page.get_by_test_id("task-row")).to_have_count(2)
    expect(page.get_by_test_id("task-row").first).to_have_attribute("data-status", "succeeded", timeout=30_000)


def test_a_required_choice_starts_unchosen_and_a_union_takes_json(stack: Any, browser: Browser) -> None:
    # tests/workloads_for_tests.py's picks. Before, the required choice
    # showed and sent its first value, though the user never chose one, and
    # the union (int | str) was a number box, in which no string could be typed.
    # Not the page fixture: Chromium logs the 400 that the unchosen choice gets as a console error.
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        queue_picks(stack, page)
    finally:
        context.close()
    assert not errors


def queue_picks(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    page.select_option("#workload-kind", "picks")
    fields = page.locator("#param-fields")
    mode = fields.locator("select[name=mode]")
    expect(mode.locator("option")).to_have_text(["Choose\u2026", "fast", "slow"])
    expect(mode.locator("option:checked")).to_have_text("Choose\u2026")
    expect(mode).to_have_attribute("required", "")
    expect(fields.locator("select[name=tag] option")).to_have_text(["only"])
    key = fields.locator("textarea[name=key]")
    expect(key).to_have_value("0")

    body = queue_from_the_form(page)
    assert body["params"] == {"key": 0, "tag": "only"}
    expect(fields.locator("[data-param=mode] .field-errors")).to_have_text("Field required")
    expect(page.get_by_test_id("task-row")).to_have_count(0)

    mode.select_option("slow")
    key.fill('"abc"')
    body = queue_from_the_form(page)
    assert body["params"] == {"mode": "slow", "key": "abc", "tag": "only"}
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    assert Task.objects.get(pk=str(row.get_attribute("data-task-id"))).result == body["params"]


def test_cancel_a_running_task_then_retry_it_from_its_row(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    page.locator("input[name=seconds]").fill("60")
    page.get_by_test_id("queue-task").click()
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "running", timeout=30_000)
    row.get_by_test_id("cancel-task").click()
    expect(row).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(page.get_by_test_id("notification")).to_contain_text("cancelled")

    original = row.get_attribute("data-task-id")
    row.get_by_test_id("retry-task").click()
    expect(page.get_by_test_id("task-row")).to_have_count(2)
    copy = page.get_by_test_id("task-row").first
    assert copy.get_attribute("data-task-id") != original
    expect(copy).to_contain_text("seconds=60")
    copy.get_by_test_id("cancel-task").click()  # no need to keep a worker busy for a minute
    expect(copy).to_have_attribute("data-status", "cancelled", timeout=10_000)


def test_the_page_reconnects_after_the_web_process_restarts_and_misses_nothing(private_stack, browser: Browser) -> None:
    running = private_stack()
    running.start_worker(concurrency=2)
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        first = context.new_page()
        first.goto(running.base_url + "/signup/")
        sign_up(first)
        second = context.new_page()  # a second tab of the same user
        second.goto(running.base_url + "/")
        for tab in (first, second):
            expect(tab.get_by_test_id("connection-status")).to_have_text("connected")

        first.locator("input[name=seconds]").fill("3")
        first.get_by_test_id("queue-task").click()
        for tab in (first, second):
            expect(tab.get_by_test_id("task-row").first).to_have_attribute("data-status", "running", timeout=30_000)
        running.restart_web()  # every socket drops while the task runs

        for tab in (first, second):
            expect(tab.get_by_test_id("task-row").first).to_have_attribute("data-status", "succeeded", timeout=30_000)
            expect(tab.get_by_test_id("connection-status")).to_have_text("connected", timeout=30_000)
            expect(tab.get_by_test_id("notification").filter(has_text="simulate succeeded")).to_have_count(1)
            expect(tab.get_by_test_id("inbox-unread")).to_have_text("1")

        # A second task, after the reconnection: its toast is a barrier; the
        # first task's toast must still be there once, not twice.
        first.locator("input[name=seconds]").fill("0")
        first.locator("input[name=fail]").check()
        first.get_by_test_id("queue-task").click()
        for tab in (first, second):
            expect(tab.get_by_test_id("notification").filter(has_text="simulate failed")).to_have_count(1)
            expect(tab.get_by_test_id("notification").filter(has_text="simulate succeeded")).to_have_count(1)
            expect(tab.get_by_test_id("inbox-unread")).to_have_text("2")

        # Marking read in one tab clears the bell in the other, live.
        first.get_by_test_id("inbox-bell").click()
        expect(first.get_by_test_id("inbox-item")).to_have_count(2)
        first.get_by_test_id("inbox-mark-read").click()
        expect(second.get_by_test_id("inbox-unread")).to_have_text("0")
        expect(second.get_by_test_id("inbox-unread")).to_be_hidden()
        expect(first.get_by_test_id("inbox-unread")).to_have_text("0")
    finally:
        context.close()


class SocketRelay:
    """Routes the page's /ws/ through Playwright: it can cut the page off
    (close its socket and refuse new ones) and hold back its ``resume``."""

    def __init__(self) -> None:
        self.refusing = False
        self.holding = False
        self.refused = 0
        self.open: list[WebSocketRoute] = []
        self.held: list[tuple[WebSocketRoute, str | bytes]] = []

    def route(self, page_side: WebSocketRoute) -> None:
        if self.refusing:
            self.refused += 1
            page_side.close(code=4000, reason="cut off by the test")
            return
        server = page_side.connect_to_server()
        self.open.append(page_side)

        def from_page(message: str | bytes) -> None:
            if self.holding and '"resume"' in str(message):
                self.held.append((server, message))
            else:
                server.send(message)

        page_side.on_message(from_page)

    def cut_off(self) -> None:
        self.refusing = True
        for page_side in self.open:
            page_side.close(code=4000, reason="cut off by the test")
        self.open.clear()

    def reconnect(self, *, holding_resume: bool = False) -> None:
        self.refusing, self.holding = False, holding_resume

    def release(self) -> None:
        self.holding = False
        for server, message in self.held:
            server.send(message)
        self.held.clear()


def signed_up_behind_a_relay(page: Page, base_url: str) -> tuple[SocketRelay, str]:
    """A new user signed up on a page whose socket goes through a SocketRelay,
    connected; the relay and the username."""
    relay = SocketRelay()
    page.route_web_socket(re.compile(r"/ws/$"), relay.route)
    page.goto(base_url + "/signup/")
    username = sign_up(page)
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    return relay, username


def fail_a_task_while_cut_off(page: Page, relay: SocketRelay, username: str) -> str:
    """Queues a failing task from the page while its socket is cut off;
    returns its id once it has failed."""
    relay.cut_off()
    expect(page.get_by_test_id("connection-status")).to_have_text("reconnecting")
    page.locator("input[name=seconds]").fill("0")
    page.locator("input[name=fail]").check()
    page.get_by_test_id("queue-task").click()
    missed = page.get_by_test_id("task-row").first  # from the POST's answer
    expect(missed).to_have_attribute("data-status", "queued")
    missed_id = missed.get_attribute("data-task-id")
    assert missed_id
    wait_for(
        lambda: Task.objects.filter(id=missed_id, owner__username=username, status="failed").exists(),
        timeout=30,
        what="the task queued while cut off to fail",
    )
    page.locator("input[name=fail]").uncheck()
    return missed_id


def test_the_page_rides_out_redis_being_cut_off_and_misses_nothing(private_stack, page: Page) -> None:
    """The page's socket drops while its web process is cut off from Redis,
    its channel layer (behind a proxy of the test's own; the worker and
    another web process reach Redis directly): each reconnection is told to
    try again (close 1013; the handshake was a 500). Once Redis is back the
    page reconnects, resumes, and shows the task that finished meanwhile,
    its toast once."""
    target = urlsplit(os.environ["CHANNEL_LAYER_URL"])
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        cut_off = private_stack(CHANNEL_LAYER_URL=proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
        direct = private_stack()
        direct.start_worker(concurrency=1)
        relay, username = signed_up_behind_a_relay(page, cut_off.base_url)
        status = page.get_by_test_id("connection-status")

        proxy.pause()
        relay.cut_off()  # the socket drops; the page's next ones reach the server
        expect(status).to_have_text("reconnecting")
        relay.reconnect()
        wait_on_page(
            page,
            lambda: "refused for now (closed with 1013)" in cut_off.web.log(),
            what="a reconnection told to try again",
        )
        script = Account.log_in(direct.base_url, username)
        task = script.queue("simulate", seconds=0)
        wait_for(lambda: Event.objects.filter(user__username=username).count() == 3, timeout=30, what="the task")
        expect(status).to_have_text("reconnecting")

        proxy.resume()
        row = page.locator(f'[data-testid="task-row"][data-task-id="{task["id"]}"]')
        expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(status).to_have_text("connected")
        expect(page.get_by_test_id("notification").filter(has_text="simulate succeeded")).to_have_count(1)


def test_events_replayed_after_a_newer_live_one_still_reach_the_page(stack: Any, page: Page) -> None:
    """Live events flow from hello on, so one can reach the page before the
    older ones its resume asks for (docs/events.md). Made to happen every
    time: a task fails while the page is cut off; on the next connection the
    page's resume is held back until a later task's live events have arrived."""
    relay, username = signed_up_behind_a_relay(page, stack.base_url)
    status = page.get_by_test_id("connection-status")

    missed_id = fail_a_task_while_cut_off(page, relay, username)
    relay.reconnect(holding_resume=True)
    expect(status).to_have_text("connected", timeout=30_000)
    page.get_by_test_id("queue-task").click()
    later = page.locator(f'[data-testid="task-row"]:not([data-task-id="{missed_id}"])')
    expect(later).to_have_attribute("data-status", "succeeded", timeout=30_000)  # live, ahead of the resume
    expect(page.locator(f'[data-task-id="{missed_id}"]')).to_have_attribute("data-status", "queued")
    assert len(relay.held) == 1

    relay.release()
    expect(page.locator(f'[data-task-id="{missed_id}"]')).to_have_attribute("data-status", "failed", timeout=10_000)
    expect(page.get_by_test_id("notification").filter(has_text="Simulated failure")).to_have_count(1)
    expect(page.get_by_test_id("inbox-unread")).to_have_text("2")


def test_a_page_whose_missed_events_expired_reloads_its_tasks_and_goes_on_live(stack: Any, page: Page) -> None:
    """Retention deleted the events the page missed: its resume is answered
    with resync, the page reloads the tasks over REST, and later events still
    apply."""
    relay, username = signed_up_behind_a_relay(page, stack.base_url)
    missed_id = fail_a_task_while_cut_off(page, relay, username)
    # As if the page had been away longer than EVENT_RETENTION_DAYS.
    Event.objects.filter(user__username=username).update(created_at=timezone.now() - timedelta(days=30))
    assert delete_expired_events() == 3

    relay.reconnect()
    expect(page.locator(f'[data-task-id="{missed_id}"]')).to_have_attribute("data-status", "failed", timeout=30_000)
    page.get_by_test_id("queue-task").click()
    later = page.locator(f'[data-testid="task-row"]:not([data-task-id="{missed_id}"])')
    expect(later).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.get_by_test_id("notification").filter(has_text="simulate succeeded")).to_have_count(1)


def test_a_tab_left_open_after_a_log_out_in_another_reloads_signed_out(stack: Any, browser: Browser) -> None:
    """The socket of the stale tab is closed with 4401 (live/signals.py); the
    page reloads itself instead of going on showing a name, a form and a
    bell that no longer work."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    first, second = context.new_page(), context.new_page()
    first.goto(stack.base_url + "/signup/")
    username = sign_up(first)
    second.goto(stack.base_url + "/")
    expect(second.get_by_test_id("connection-status")).to_have_text("connected")
    first.get_by_role("button", name="Log out").click()
    expect(first.get_by_role("link", name="Log in").first).to_be_visible()
    expect(second.get_by_test_id("nav-username")).to_have_count(0, timeout=20_000)
    expect(second.get_by_role("link", name="Log in").first).to_be_visible()
    assert username not in second.content()
    context.close()


def test_a_form_from_an_out_of_date_page_gets_the_sites_page_not_djangos(stack: Any, browser: Browser) -> None:
    """The log-in page open in a second tab; signing up in the first rotates
    the CSRF token, so the second tab's form is refused (a 403): with the
    site's own page, which says who is signed in, not Django's bare one."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    first, second = context.new_page(), context.new_page()
    messages: list[str] = []
    second.on("console", lambda message: messages.append(message.text))
    first.goto(stack.base_url + "/signup/")
    second.goto(stack.base_url + "/login/")
    username = sign_up(first)
    second.fill("input[name=username]", username)
    second.fill("input[name=password]", PASSWORD)
    with second.expect_navigation() as navigation:
        second.locator("form button[type=submit]").last.click()
    assert navigation.value is not None and navigation.value.status == 403
    expect(second.get_by_test_id("csrf-failure")).to_contain_text("out of date")
    expect(second.get_by_test_id("nav-username")).to_have_text(username)
    assert not [text for text in messages if "Content Security Policy" in text], messages
    context.close()


def test_on_a_narrow_screen_a_long_username_leaves_the_bell_on_screen(stack: Any, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.goto(stack.base_url + "/signup/")
    username = f"firstname.lastname.{uuid.uuid4().hex[:12]}"
    page.fill("input[name=username]", username)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.locator("form button[type=submit]").last.click()
    expect(page.get_by_test_id("nav-username")).to_have_attribute("title", username)
    for testid in ("inbox-bell", "nav-username"):
        box = page.get_by_test_id(testid).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, (testid, box)
    page.get_by_test_id("inbox-bell").click()  # reachable: it opens its panel
    expect(page.get_by_test_id("inbox-panel")).to_be_visible()
    context.close()


def test_the_bell_counts_unread_notifications_on_every_page(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    page.locator("input[name=seconds]").fill("0")
    page.get_by_test_id("queue-task").click()
    expect(page.get_by_test_id("inbox-unread")).to_have_text("1", timeout=30_000)
    page.goto(stack.base_url + "/about/")
    expect(page.get_by_test_id("inbox-unread")).to_have_text("1")
    expect(page.get_by_test_id("inbox-bell")).to_have_attribute("aria-label", "Notifications, 1 unread")


class HeldEvents:
    """Relays the page's socket to the server, holding back the server's
    event frames of one kind while told to, then passing them on."""

    def __init__(self) -> None:
        self.holding: str | None = None
        self.held: list[str | bytes] = []
        self.page_side: WebSocketRoute | None = None

    def route(self, page_side: WebSocketRoute) -> None:
        server = page_side.connect_to_server()
        self.page_side = page_side

        def from_server(message: str | bytes) -> None:
            if self.holding is not None and json.loads(message).get("event") == self.holding:
                self.held.append(message)
            else:
                page_side.send(message)

        server.on_message(from_server)

    def release(self) -> None:
        assert self.page_side is not None
        self.holding = None
        for message in self.held:
            self.page_side.send(message)
        self.held.clear()


def test_a_notification_in_an_inbox_count_is_not_counted_again_when_its_event_comes(stack: Any, page: Page) -> None:
    """Marked read elsewhere while a task's end is still on its way to the
    page (a slower path: another web process, a worker's publisher): the
    inbox frame's count already has that task, and says up to which event
    it counted. The event that comes after it is not counted a second time:
    the bell said 2 for one unread notification before."""
    relay = HeldEvents()
    page.route_web_socket(re.compile(r"/ws/$"), relay.route)
    page.goto(stack.base_url + "/signup/")
    account = Account.log_in(stack.base_url, sign_up(page))
    unread = page.get_by_test_id("inbox-unread")
    for _ in range(2):
        account.queue("simulate", seconds=0)
    expect(unread).to_have_text("2", timeout=30_000)
    relay.holding = "task.succeeded"
    late = account.queue("simulate", seconds=0)
    wait_on_page(page, lambda: relay.held, what="the late task's end, held")
    read = account.http.get("/api/notifications/").json()["results"][1]["id"]  # the second task's end
    answer = account.http.post("/api/notifications/read/", json={"up_to": read}).json()
    assert answer["unread"] == 1  # the late task's end
    expect(unread).to_have_text("1")  # the inbox frame
    relay.release()
    expect(page.locator(f'[data-testid="task-row"][data-task-id="{late["id"]}"]')).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(unread).to_have_text("1")
    expect(page.get_by_test_id("inbox-bell")).to_have_attribute("aria-label", "Notifications, 1 unread")


def test_a_listing_overtaken_by_a_notification_keeps_it_in_the_bell(stack: Any, page: Page) -> None:
    """The bell's panel asks for the inbox over REST; a task ends after the
    server has answered and its event reaches the page on the socket before
    that answer does. The answer's count (0) and list (empty) are older than
    the event: the bell keeps counting it and the panel lists it. Before,
    the answer put the bell back to 0 and the panel showed nothing."""
    page.goto(stack.base_url + "/signup/")
    account = Account.log_in(stack.base_url, sign_up(page))
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    held: list[tuple[Route, APIResponse]] = []
    page.route(re.compile(r"/api/notifications/\?"), lambda route: held.append((route, route.fetch())))
    page.get_by_test_id("inbox-bell").click()
    wait_on_page(page, lambda: held, what="the panel's listing")
    route, answer = held[0]
    assert (answer.json()["unread"], answer.json()["results"]) == (0, [])
    task = account.queue("simulate", seconds=0)
    expect(page.locator(f'[data-testid="task-row"][data-task-id="{task["id"]}"]')).to_have_attribute(
        "data-status", "succeeded", timeout=30_000
    )
    unread = page.get_by_test_id("inbox-unread")
    expect(unread).to_have_text("1")
    route.fulfill(response=answer)
    expect(page.get_by_test_id("inbox-status")).to_have_text("")  # the listing is in
    expect(unread).to_have_text("1")
    expect(page.get_by_test_id("inbox-item")).to_have_count(1)
    expect(page.get_by_test_id("inbox-item")).to_have_attribute("data-outcome", "succeeded")


def test_the_keyboard_focus_stays_on_the_queue_button(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    page.locator("input[name=seconds]").fill("0")
    page.get_by_test_id("queue-task").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("Queued.")).to_be_visible()
    expect(page.get_by_test_id("queue-task")).to_be_focused()


def test_older_tasks_are_shown_on_demand_below_the_recent_ones(stack: Any, page: Page) -> None:
    alice = Account.sign_up(stack.base_url)
    queued = [alice.queue("simulate", seconds=0)["id"] for _ in range(45)]
    page.goto(stack.base_url + "/login/")
    page.fill("input[name=username]", alice.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form button[type=submit]").last.click()
    rows = page.get_by_test_id("task-row")
    expect(rows).to_have_count(20)
    older = page.get_by_test_id("older-tasks")
    older.click()
    expect(rows).to_have_count(40)
    older.click()
    expect(rows).to_have_count(45)
    expect(older).to_be_hidden()
    shown = [row.get_attribute("data-task-id") for row in rows.all()]
    assert shown == list(reversed(queued))  # newest first, each once


def test_a_megabyte_parameter_shows_on_the_page_as_it_does_live(stack: Any, page: Page) -> None:
    """The page embeds a display copy of a long parameter (workloads/views.py):
    its row reads as the row of the same task drawn from a live event."""
    alice = Account.sign_up(stack.base_url)
    text = ("a few words to count " * 60_000)[: 1024 * 1024]
    with alice.socket() as socket:
        task = alice.queue("text_stats", text=text)
        socket.events_until(terminal_for(task["id"]))
    page.goto(stack.base_url + "/login/")
    page.fill("input[name=username]", alice.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form button[type=submit]").last.click()
    row = page.locator(f"[data-testid=task-row][data-task-id='{task['id']}']")
    expect(row).to_have_attribute("data-status", "succeeded")
    params = row.locator(".task__params")
    # app.js: each value cut to 24 characters, the tooltip to 500 of the whole JSON.
    expect(params).to_have_text('text="' + text[:23] + '\u2026"')
    expect(params).to_have_attribute("title", json.dumps({"text": text}, separators=(",", ":"))[:499] + "\u2026")


def test_a_long_result_shows_on_the_page_as_it_does_live(stack: Any, page: Page) -> None:
    """The page embeds a result's strings cut to 2,000 characters
    (workloads/views.py): its row reads as the row drawn from the live event,
    with the whole result. Astral characters (two UTF-16 units in app.js, one
    character in the cut) and characters JSON escapes included."""
    alice = Account.sign_up(stack.base_url)
    text = '\U0001f600"\\\nab' * 150  # 900 characters, the result 9,000
    page.goto(stack.base_url + "/login/")
    page.fill("input[name=username]", alice.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form button[type=submit]").last.click()
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    task = alice.queue("reverse", text=text, times=10)
    row = page.locator(f"[data-testid=task-row][data-task-id='{task['id']}']")
    expect(row).to_have_attribute("data-status", "succeeded")
    result = row.locator(".task__result")
    live = (result.text_content(), result.get_attribute("title"))
    assert live[1] is not None and live[1].endswith("\u2026") and len(live[1]) > 1500  # the result's JSON, cut

    page.reload()
    expect(row).to_have_attribute("data-status", "succeeded")
    embedded = json.loads(page.locator("#initial-tasks").text_content() or "[]")
    assert embedded[0]["result"]["reversed"] == (text[::-1] * 10)[:1999] + "\u2026"  # the cut copy
    assert (result.text_content(), result.get_attribute("title")) == live


def test_the_older_tasks_button_is_not_shown_without_older_tasks(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    expect(page.get_by_test_id("older-tasks")).to_be_hidden()


def test_a_log_in_as_another_user_in_another_tab_leaves_both_tabs_as_that_user(stack: Any, browser: Browser) -> None:
    """The first user's tab is told (4401) after the log-in's answer, with
    its new cookie, has reached the browser: it reloads as the second user.
    Told before, it reloaded with the old cookie, and the anonymous page's
    answer deleted the new one: the second log-in was undone."""
    second_user = Account.sign_up(stack.base_url).username
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    first, second = context.new_page(), context.new_page()
    first.goto(stack.base_url + "/signup/")
    first_user = sign_up(first)
    expect(first.get_by_test_id("connection-status")).to_have_text("connected")
    second.goto(stack.base_url + "/about/")
    # The browser's own request, as a log-in form's script sends it: Chromium
    # stores the new cookie as the answer comes. (Playwright's page.request is
    # sent by its driver, which hands the cookie to the browser later: the
    # first tab could reload with the old one before it had.)
    status = second.evaluate(
        """async ([username, password]) => (await fetch('/api/auth/login/', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({username, password}),
        })).status""",
        [second_user, PASSWORD],
    )
    assert status == 200
    expect(first.get_by_test_id("nav-username")).to_have_text(second_user, timeout=20_000)
    expect(first.get_by_test_id("connection-status")).to_have_text("connected")
    assert first_user not in first.content()
    third = context.new_page()  # the browser is still signed in, as the second user
    third.goto(stack.base_url + "/")
    expect(third.get_by_test_id("nav-username")).to_have_text(second_user)
    context.close()


def test_a_socket_reopened_with_another_users_cookie_reloads_the_page_as_them(private_stack, browser: Browser) -> None:
    """While a page's socket is down, another user signs in in this browser
    (the first user's session lives on, so nobody is told): the reopened
    socket says hello as the second user. The page took it for its own and
    merged their tasks, bell and toasts into the first user's page."""
    running = private_stack()
    second = Account.sign_up(running.base_url)
    second_session = httpx.Client(base_url=running.base_url, timeout=HTTP_TIMEOUT)
    assert second_session.post("/api/auth/login/", json={"username": second.username, "password": PASSWORD}).is_success
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(running.base_url + "/signup/")
        first_user = sign_up(page)
        expect(page.get_by_test_id("connection-status")).to_have_text("connected")
        context.add_cookies(
            [{"name": "sessionid", "value": second_session.cookies["sessionid"], "url": running.base_url}]
        )
        running.restart_web()  # the socket drops and reopens with the cookie the browser has now
        expect(page.get_by_test_id("nav-username")).to_have_text(second.username, timeout=30_000)
        expect(page.get_by_test_id("connection-status")).to_have_text("connected", timeout=30_000)
        assert first_user not in page.content()
    finally:
        context.close()


class FirstSockets:
    """Routes the page's /ws/: each socket is passed to ``play``, which
    closes it, holds it or connects it to the server; ``seen`` counts them."""

    def __init__(self, play: Any) -> None:
        self.play = play
        self.seen = 0

    def route(self, page_side: WebSocketRoute) -> None:
        self.seen += 1
        self.play(page_side)


def session_key_of(page: Page) -> str:
    return next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "sessionid")


def test_behind_a_proxy_that_does_not_pass_websockets_the_page_says_it_cannot_connect(
    stack: Any, browser: Browser
) -> None:
    """The pages come through the proxy; the socket's handshake is passed on
    as a plain GET /ws/, which the server answers 404. The badge said
    "connecting" for ever. Now it says it cannot connect, and a screen reader
    is told, while the page keeps trying, backing off."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # Chromium logs each refused handshake
    try:
        page = context.new_page()
        page.goto(stack.base_url + "/signup/")
        sign_up(page)  # the session cookie is 127.0.0.1's, whatever the port
        with HttpProxyWithoutWebSockets(stack.base_url) as proxy:
            page.goto(proxy.base_url + "/")
            expect(page.get_by_test_id("nav-username")).to_be_visible()
            loaded = time.monotonic()
            expect(page.get_by_test_id("connection-status")).to_have_text("cannot connect, retrying", timeout=15_000)
            expect(page.get_by_test_id("task-announcer")).to_have_text("Cannot connect for live updates. Still trying.")
            handshakes = proxy.forwarded.count("GET /ws/")
            # Backing off from 0.5 s, doubling: some four attempts in the first 5 s, not dozens.
            assert 2 <= handshakes <= 6, (handshakes, time.monotonic() - loaded)
    finally:
        context.close()


def test_a_first_socket_refused_as_signed_out_reloads_the_page_signed_out(stack: Any, page: Page) -> None:
    """The session ends between the page's answer and its socket (it
    expired, or was ended elsewhere): the server closes that first socket
    with 4401. The page does what it does for a sign-out: it reloads, and
    shows the log-in links; it does not keep trying, nor say it cannot
    connect."""
    page.goto(stack.base_url + "/signup/")
    username = sign_up(page)
    session_key = session_key_of(page)

    def end_the_session_then_connect(page_side: WebSocketRoute) -> None:
        Session.objects.filter(session_key=session_key).delete()
        page_side.connect_to_server()

    sockets = FirstSockets(end_the_session_then_connect)
    page.route_web_socket(re.compile(r"/ws/$"), sockets.route)
    page.reload()
    expect(page.get_by_role("link", name="Log in").first).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("nav-username")).to_have_count(0)
    assert username not in page.content()
    assert sockets.seen == 1


def test_a_page_refused_as_signed_out_again_within_the_minute_stays_and_says_so(stack: Any, page: Page) -> None:
    """Refused (4401) before its first hello, the page reloads once a minute
    at most: a socket refused while pages are not (a proxy that drops the
    cookie on WebSockets) would have it reload for ever. The page that stays
    tried no more, and said nothing: its badge said "signed out". Now a
    screen reader is told too, once."""
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    sockets = FirstSockets(lambda page_side: page_side.close(code=4401, reason="refused by the test"))
    page.route_web_socket(re.compile(r"/ws/$"), sockets.route)
    page.reload()
    announcer = page.get_by_test_id("task-announcer")
    expect(announcer).to_have_text("Signed out. Live updates stopped; reload the page to sign in again.")
    expect(page.get_by_test_id("connection-status")).to_have_text("signed out")
    assert sockets.seen == 2  # the page's first load, and the one reload
    page.wait_for_timeout(3000)  # longer than the first retries would wait (0.5, 1 s)
    assert sockets.seen == 2
    expect(page.get_by_test_id("connection-status")).to_have_text("signed out")


def test_a_socket_held_without_a_hello_is_given_up_and_the_wait_announced(stack: Any, page: Page) -> None:
    """A proxy that takes the socket and passes nothing: the page's socket
    opens and no hello ever comes. The badge said "connecting" for ever (the
    page's ping comes 25 s after opening; nothing answered it 10 s later and
    the page tried again, "connecting" still). Now the badge says it cannot
    connect after 5 s, a screen reader is told, the socket is given up 20 s
    after it was opened, and the next one, let through, is announced."""
    page.goto(stack.base_url + "/signup/")
    sign_up(page)

    def hold_the_first(page_side: WebSocketRoute) -> None:
        if sockets.seen > 1:
            page_side.connect_to_server()
        # The first is left open and silent: no connect_to_server, no close.

    sockets = FirstSockets(hold_the_first)
    page.route_web_socket(re.compile(r"/ws/$"), sockets.route)
    started = time.monotonic()
    page.reload()
    badge = page.get_by_test_id("connection-status")
    announcer = page.get_by_test_id("task-announcer")
    expect(badge).to_have_text("cannot connect, retrying", timeout=15_000)
    expect(announcer).to_have_text("Cannot connect for live updates. Still trying.")
    assert sockets.seen == 1
    expect(badge).to_have_text("connected", timeout=40_000)
    assert sockets.seen == 2
    assert time.monotonic() - started >= 19  # given up at 20 s, not before
    # Said once the connection has held 10 s (STABLE_CONNECTION_MS).
    expect(announcer).to_have_text("Connected. Live updates started.", timeout=20_000)


# Toasts (static/tasklight/app.js): Playwright's clock, installed before the
# page loads, stands the page's timers still; fast_forward moves them past
# the 8 s a timed toast is shown, without waiting for it.
TOAST_MS_PASSED = "00:30"


def sign_up_with_a_still_clock(stack: Any, page: Page) -> None:
    """Signs up with the page's clock stood still once its socket is up."""
    page.clock.install()
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)


def queue_and_see_its_toast(page: Page, *, fail: bool) -> None:
    """Queues a simulate task that finishes at once and waits for its row to
    turn, with which (the same event frame) its toast is shown."""
    rows = page.get_by_test_id("task-row")
    before = rows.count()
    page.locator("input[name=seconds]").fill("0")
    page.locator("input[name=fail]").set_checked(fail)
    page.get_by_test_id("queue-task").click()
    expect(rows).to_have_count(before + 1)
    expect(rows.first).to_have_attribute("data-status", "failed" if fail else "succeeded", timeout=30_000)


def test_a_failure_toast_stays_until_dismissed_and_a_success_toast_goes_by_itself(stack: Any, page: Page) -> None:
    sign_up_with_a_still_clock(stack, page)
    queue_and_see_its_toast(page, fail=True)
    queue_and_see_its_toast(page, fail=False)
    expect(page.get_by_test_id("notification").first).to_contain_text("simulate failed: Simulated failure")
    expect(page.get_by_test_id("notification").last).to_contain_text("simulate succeeded")

    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(page.get_by_test_id("notification").filter(has_text="succeeded")).to_have_count(0)
    expect(page.get_by_test_id("notification")).to_have_count(1)
    expect(page.get_by_test_id("notification")).to_contain_text("Simulated failure")
    page.clock.fast_forward("10:00")
    expect(page.get_by_test_id("notification")).to_have_count(1)

    # Announced once: the region that holds the toasts is the one live
    # region; a role or aria-live inside it would announce a toast again.
    region = page.locator("#toasts")
    expect(region).to_have_attribute("aria-live", "polite")
    expect(region.locator("[role], [aria-live]")).to_have_count(0)

    page.get_by_role("button", name="Dismiss notification").click()
    expect(page.get_by_test_id("notification")).to_have_count(0)


def test_a_toast_is_dismissed_from_the_keyboard_and_stays_while_focused(stack: Any, page: Page) -> None:
    sign_up_with_a_still_clock(stack, page)
    queue_and_see_its_toast(page, fail=False)
    queue_and_see_its_toast(page, fail=True)
    success = page.get_by_test_id("notification").filter(has_text="simulate succeeded")
    failure = page.get_by_test_id("notification").filter(has_text="simulate failed")
    page.locator("footer a").last.focus()  # the toasts come after the footer
    page.keyboard.press("Tab")
    expect(success.get_by_role("button", name="Dismiss notification")).to_be_focused()

    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(page.get_by_test_id("notification")).to_have_count(2)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("notification")).to_have_count(1)
    # The focus moves on to the toast that is left, not back to the top.
    expect(failure.get_by_role("button", name="Dismiss notification")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("notification")).to_have_count(0)


def test_a_success_toast_waits_while_the_pointer_is_over_it(stack: Any, page: Page) -> None:
    sign_up_with_a_still_clock(stack, page)
    queue_and_see_its_toast(page, fail=False)
    page.get_by_test_id("notification").hover()
    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(page.get_by_test_id("notification")).to_have_count(1)

    page.mouse.move(5, 5)  # away: the timer goes on
    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(page.get_by_test_id("notification")).to_have_count(0)


def test_too_many_toasts_drop_an_older_success_not_an_unseen_failure(stack: Any, page: Page) -> None:
    sign_up_with_a_still_clock(stack, page)
    queue_and_see_its_toast(page, fail=True)
    for _ in range(4):
        queue_and_see_its_toast(page, fail=False)
    toasts = page.get_by_test_id("notification")
    expect(toasts).to_have_count(5)
    shown = [toast.get_attribute("data-event-id") for toast in toasts.all()]
    queue_and_see_its_toast(page, fail=False)  # the sixth, one over the five shown

    expect(toasts).to_have_count(5)
    expect(toasts.first).to_contain_text("Simulated failure")
    now_shown = [toast.get_attribute("data-event-id") for toast in toasts.all()]
    assert now_shown[:4] == [shown[0], *shown[2:]], (shown, now_shown)  # the oldest success went


def mark_read_from_the_page(page: Page) -> None:
    """Marks every notification read over REST with the page's own session,
    as another tab (or a script) would: this page is not the one that asks."""
    status = page.evaluate(
        """async () => (await fetch('/api/notifications/read/', {
            method: 'POST',
            headers: {
                'Content-Type': 'application/json',
                'X-CSRFToken': document.querySelector('input[name=csrfmiddlewaretoken]').value,
            },
            body: JSON.stringify({up_to: 1000000}),
        })).status"""
    )
    assert status == 200


def test_mark_all_as_read_takes_away_the_toasts_of_what_it_marked(stack: Any, page: Page) -> None:
    """A failure's toast stays until dismissed because the bell has it
    unread; marked read, it goes, and so does a success's still on screen.
    Before, "Mark all as read" left every failure toast to be closed one by one."""
    sign_up_with_a_still_clock(stack, page)
    queue_and_see_its_toast(page, fail=True)
    queue_and_see_its_toast(page, fail=False)
    toasts = page.get_by_test_id("notification")
    expect(toasts).to_have_count(2)

    page.get_by_test_id("inbox-bell").click()
    expect(page.get_by_test_id("inbox-item")).to_have_count(2)
    page.get_by_test_id("inbox-mark-read").click()
    expect(page.get_by_test_id("inbox-unread")).to_have_text("0")
    expect(toasts).to_have_count(0)

    # What comes after the mark is unread, and toasted as ever.
    page.keyboard.press("Escape")
    queue_and_see_its_toast(page, fail=True)
    expect(toasts).to_have_count(1)
    expect(toasts).to_contain_text("Simulated failure")


def test_a_notification_read_elsewhere_is_not_toasted_when_the_page_catches_up(stack: Any, page: Page) -> None:
    """A task fails while the page's socket is down and is marked read in the
    meantime (another tab, a script): the page's resume replays the event,
    the row turns failed, and no toast asks to be dismissed again."""
    relay, username = signed_up_behind_a_relay(page, stack.base_url)
    missed_id = fail_a_task_while_cut_off(page, relay, username)
    mark_read_from_the_page(page)

    relay.reconnect()
    expect(page.locator(f'[data-task-id="{missed_id}"]')).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(page.get_by_test_id("inbox-unread")).to_have_text("0")
    # A later task's toast is the barrier: the replayed failure's would be shown by now.
    queue_and_see_its_toast(page, fail=False)
    expect(page.get_by_test_id("notification")).to_have_count(1)
    expect(page.get_by_test_id("notification")).to_contain_text("simulate succeeded")


def queue_from_the_page(page: Page, **params: Any) -> None:
    """Queues a simulate task with the page's own session, without a click:
    a hidden tab is sent no input."""
    status = page.evaluate(
        """async (params) => (await fetch('/api/tasks/', {
            method: 'POST',
            headers: {
                'Content-Type': 'application/json',
                'X-CSRFToken': document.querySelector('input[name=csrfmiddlewaretoken]').value,
            },
            body: JSON.stringify({kind: 'simulate', params}),
        })).status""",
        params,
    )
    assert status == 202


def test_a_success_toast_waits_while_its_tab_is_hidden(stack: Any, tabs: BrowserContext) -> None:
    """The person turns to another tab: a success toast on screen, and one
    for a task that finishes meanwhile, are there when they come back, and
    go by themselves after that. Before, both ran out in the hidden tab."""
    page = tabs.pages[0]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_up_with_a_still_clock(stack, page)
    toasts = page.get_by_test_id("notification")
    queue_and_see_its_toast(page, fail=False)
    first = toasts.get_attribute("data-event-id")
    page.clock.fast_forward(5000)  # 3 s of its 8 left

    other = tabs.new_page()  # a new tab, in front
    page.wait_for_function("document.visibilityState === 'hidden'")
    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(toasts).to_have_count(1)
    queue_from_the_page(page, seconds=0)  # finishes while the tab is hidden
    expect(toasts).to_have_count(2, timeout=30_000)
    page.clock.fast_forward("10:00")
    expect(toasts).to_have_count(2)

    page.bring_to_front()
    page.wait_for_function("document.visibilityState === 'visible'")
    page.clock.fast_forward(2000)
    expect(toasts).to_have_count(2)
    page.clock.fast_forward(1500)  # the first toast's 3 s are up; the second has its 8 s
    expect(toasts).to_have_count(1)
    expect(toasts).not_to_have_attribute("data-event-id", str(first))
    page.clock.fast_forward(TOAST_MS_PASSED)
    expect(toasts).to_have_count(0)
    other.close()
    assert not errors, errors


# Counts the page's WebSocket attempts, with when each began (ms since load).
COUNT_ATTEMPTS = """
(() => {
  window.__attempts = [];
  window.WebSocket = new Proxy(window.WebSocket, {
    construct(Original, args) {
      window.__attempts.push(performance.now());
      return new Original(...args);
    }
  });
})();
"""


def test_a_tab_refused_as_one_socket_too_many_says_why_and_connects_once_another_closes(
    private_stack: Any, browser: Browser
) -> None:
    """The server allows MAX_SOCKETS_PER_USER sockets per user (here 1) and
    closes one more with 4429. The page took it for any failure: "cannot
    connect, retrying", attempts 0.5, 1, 2 s apart, and never a word of why.
    Now the badge and a screen reader say too many tabs are open, the page
    tries again 15 s later (then 30, then every 60 s), and it connects once
    the other tab is closed."""
    running = private_stack(MAX_SOCKETS_PER_USER="1")
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        first = context.new_page()
        first.goto(running.base_url + "/signup/")
        sign_up(first)
        expect(first.get_by_test_id("connection-status")).to_have_text("connected")

        second = context.new_page()  # the same user's second tab: one socket too many
        second.add_init_script(COUNT_ATTEMPTS)
        second.goto(running.base_url + "/")
        badge = second.get_by_test_id("connection-status")
        announcer = second.get_by_test_id("task-announcer")
        expect(badge).to_have_text("too many tabs open, retrying")
        expect(announcer).to_have_text(
            "Too many tabs open for live updates. Close another tab of Tasklight; this page keeps trying."
        )
        refused_at = time.monotonic()
        # The ordinary backoff would have made three more attempts by now
        # (0.5, 1, 2 s apart); the first tab then closes well before the 11 s
        # (15 s less its jitter) after which this one tries again.
        second.wait_for_timeout(6000)
        assert len(second.evaluate("window.__attempts")) == 1
        expect(badge).to_have_text("too many tabs open, retrying")

        first.close()  # frees the user's socket
        expect(badge).to_have_text("connected", timeout=30_000)
        began: list[float] = second.evaluate("window.__attempts")
        assert len(began) == 2, began
        assert began[1] - began[0] >= 0.75 * 15_000, began
        assert time.monotonic() - refused_at < 25
        expect(announcer).to_have_text("Connected. Live updates started.", timeout=20_000)
    finally:
        context.close()
