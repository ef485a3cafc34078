"""Accessibility in a real browser: axe-core (the standard rules engine, as
axe-playwright-python bundles it) on every page a visitor sees, in both
colour schemes, and a journey made with the keyboard alone, on the same
stack and Chromium as tests/test_browser.py."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from workloads.models import Task

from . import test_browser
from .proxy import TcpProxy
from .stack import PASSWORD
from .test_browser import COUNT_ATTEMPTS, SocketRelay, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

# The browser tests' fixtures: Debian's Chromium, and a page that fails its
# test if it logs an error.
browser = test_browser.browser
page = test_browser.page

AXE = Axe()
BLOCKING = ("serious", "critical")


def axe_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now,
    one line per rule and element."""
    results = AXE.run(page, options={"resultTypes": ["violations"]}).response
    found = []
    for violation in results["violations"]:
        if violation["impact"] not in BLOCKING:
            continue
        for node in violation["nodes"]:
            checks = node.get("any", []) + node.get("all", []) + node.get("none", [])
            why = "; ".join(check["message"] for check in checks)
            found.append(
                f"{violation['id']} ({violation['impact']}) at {node['target']}: {node['html'][:120]} -- {why}"
            )
    return found


# Waits for the transitions a change of colour scheme starts: axe would read
# the colours halfway. (The looping animations never end, and change no colour.)
TRANSITIONS_DONE = """
() => Promise.all(document.getAnimations()
  .filter((animation) => animation.effect.getTiming().iterations !== Infinity)
  .map((animation) => animation.finished.catch(() => null)))
"""


def scan(page: Page, name: str, problems: list[str]) -> None:
    """axe on the page in the light and the dark colour scheme."""
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.evaluate(TRANSITIONS_DONE)
        problems.extend(f"[{name}, {scheme}] {line}" for line in axe_violations(page))
    page.emulate_media(color_scheme="light")
    page.evaluate(TRANSITIONS_DONE)


def test_axe_finds_nothing_serious_on_the_signed_out_pages(stack: Any, page: Page) -> None:
    problems: list[str] = []
    for path, name in (("/", "home"), ("/about/", "about")):
        page.goto(stack.base_url + path)
        scan(page, name, problems)
    # Another tab: the page fixture takes the 404 logged to the console for an error.
    missing = page.context.new_page()
    missing.goto(stack.base_url + "/no-such-page/")
    expect(missing.get_by_role("heading", name="Page not found")).to_be_visible()
    scan(missing, "404", problems)
    missing.close()

    page.goto(stack.base_url + "/login/")
    scan(page, "log-in", problems)
    page.fill("input[name=username]", "nobody-at-all")
    page.fill("input[name=password]", "not-the-password-1")
    page.get_by_role("button", name="Log in").last.press("Enter")
    expect(page).to_have_title(re.compile("^Error: Log in"))
    # Sent back with an error: it is what the focus (and a screen reader) meets first.
    expect(page.locator(".auth-form .errorlist")).to_be_focused()
    scan(page, "log-in with errors", problems)

    page.goto(stack.base_url + "/signup/")
    scan(page, "sign-up", problems)
    page.fill("input[name=username]", "someone-new")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD + "-not-the-same")
    page.get_by_role("button", name="Sign up").last.press("Enter")
    expect(page).to_have_title(re.compile("^Error: Sign up"))
    second = page.locator("input[name=password2]")
    expect(second).to_be_focused()
    expect(second).to_have_attribute("aria-invalid", "true")
    expect(second).to_have_accessible_description(re.compile("didn.t match"))
    scan(page, "sign-up with errors", problems)

    assert not problems, "\n".join(problems)


def make_tasks_in_every_finished_or_waiting_state(username: str) -> None:
    """Rows the page lists as they are: one queued (marked sent, so that the
    relay leaves it alone), one succeeded, one failed, one cancelled."""
    owner = get_user_model().objects.get(username=username)
    now = timezone.now()
    finished = {"started_at": now, "finished_at": now}
    Task.objects.create(owner=owner, kind="simulate", params={"seconds": 5}, status="queued", sent_at=now)
    Task.objects.create(
        owner=owner, kind="simulate", params={"seconds": 1}, status="succeeded", result={"slept": 1}, **finished
    )
    Task.objects.create(
        owner=owner,
        kind="simulate",
        params={"seconds": 1, "fail": True},
        status="failed",
        error="Simulated failure",
        **finished,
    )
    Task.objects.create(owner=owner, kind="simulate", params={"seconds": 9}, status="cancelled", **finished)


def test_axe_finds_nothing_serious_on_the_signed_in_pages(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    username = sign_up(page)
    make_tasks_in_every_finished_or_waiting_state(username)
    page.reload()
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    page.locator("input[name=seconds]").fill("60")
    page.get_by_test_id("queue-task").click()
    running = page.locator('[data-testid="task-row"][data-status="running"]')
    # Running with a progress bar that has a value.
    expect(running.get_by_role("progressbar", name="Progress of simulate")).to_have_attribute(
        "aria-valuenow", re.compile(r"^[1-9]"), timeout=30_000
    )
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        expect(page.locator(f'[data-testid="task-row"][data-status="{status}"]')).not_to_have_count(0)

    problems: list[str] = []
    scan(page, "home with tasks", problems)

    # Found in the page, not by the server (whose 400 the page fixture would take for an error).
    seconds = page.locator("input[name=seconds]")
    seconds.fill("")
    seconds.press_sequentially("1e")
    page.get_by_test_id("queue-task").click()
    expect(page.locator("#form-errors")).to_be_visible()
    # The field's own error is its description, with its help.
    expect(seconds).to_have_attribute("aria-invalid", "true")
    expect(seconds).to_have_accessible_description(re.compile("How long to work.*Enter a number"))
    scan(page, "home with form errors", problems)

    running.get_by_test_id("cancel-task").click()
    expect(page.get_by_test_id("task-row").first).to_have_attribute("data-status", "cancelled", timeout=10_000)
    page.get_by_test_id("inbox-bell").click()
    expect(page.get_by_test_id("inbox-item")).to_have_count(1)
    scan(page, "the bell's panel", problems)

    page.goto(stack.base_url + "/about/")
    scan(page, "about, signed in", problems)
    assert not problems, "\n".join(problems)


# Reads what the focused element shows: the browser's own ring, or an opaque
# outline of 2px or more whose colour stands out 3:1 against what lies behind
# it (WCAG 1.4.11); and that nothing covers its middle (2.4.11).
FOCUS_CHECK = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return 'nothing has the focus';
  const label = (el.textContent || el.value || '').trim().slice(0, 30);
  const what = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' "' + label + '"';
  if (!el.matches(':focus-visible')) return what + ' is focused but not :focus-visible';
  const style = getComputedStyle(el);
  const rgba = (text) => {
    const m = text.match(/rgba?\\(([^)]*)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  if (style.outlineStyle !== 'auto') {  // auto: the browser's own two-tone ring
    if (style.outlineStyle === 'none' || parseFloat(style.outlineWidth) < 2) {
      const shown = style.outlineStyle + ' ' + style.outlineWidth + ', box-shadow ' + style.boxShadow;
      return what + ' shows no outline of 2px (' + shown + ')';
    }
    const ring = rgba(style.outlineColor);
    if (!ring || ring.a < 1) return what + ' has an outline that is not opaque: ' + style.outlineColor;
    let behind = null;
    for (let node = el.parentElement; node && !behind; node = node.parentElement) {
      const bg = rgba(getComputedStyle(node).backgroundColor);
      if (bg && bg.a === 1) behind = bg;
    }
    behind = behind || { r: 255, g: 255, b: 255, a: 1 };
    const [hi, lo] = [lum(ring), lum(behind)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 3) return what + ' has an outline of contrast ' + ratio.toFixed(2) + ':1';
  }
  const box = el.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) return what + ' is off screen';
  const top = document.elementFromPoint(x, y);
  if (top && top !== el && !el.contains(top) && !(el.labels && Array.from(el.labels).some((l) => l.contains(top)))) {
    return what + ' is covered by ' + top.tagName.toLowerCase() + '.' + top.className;
  }
  return '';
}
"""


def assert_focus_shown(page: Page) -> None:
    problem = page.evaluate(FOCUS_CHECK)
    assert problem == "", problem


def is_focused(locator: Locator) -> bool:
    return bool(locator.evaluate("node => node === document.activeElement"))


def tab_to(page: Page, target: Locator, *, backwards: bool = False, limit: int = 40) -> None:
    """Presses Tab (Shift-Tab) until the target has the focus, checking at
    every stop that the focus is shown."""
    key = "Shift+Tab" if backwards else "Tab"
    target.first.wait_for(state="attached")
    if is_focused(target):  # there already (an autofocus field)
        assert_focus_shown(page)
        return
    for _ in range(limit):
        page.keyboard.press(key)
        assert_focus_shown(page)
        if is_focused(target):
            return
    raise AssertionError(f"{limit} presses of {key} never reached {target}")


def test_the_whole_journey_with_the_keyboard_alone(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    assert_focus_shown(page)
    tab_to(page, page.locator(".nav__account").get_by_role("link", name="Sign up"))
    page.keyboard.press("Enter")

    # Sign up.
    page.wait_for_url("**/signup/")
    username = f"keys-only-{uuid.uuid4().hex[:8]}"
    tab_to(page, page.locator("input[name=username]"))
    page.keyboard.type(username)
    tab_to(page, page.locator("input[name=password1]"))
    page.keyboard.type(PASSWORD)
    tab_to(page, page.locator("input[name=password2]"))
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("nav-username")).to_have_text(username)
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")

    # A workload (typed to, in the closed list) and its parameters.
    kind = page.locator("#workload-kind")
    tab_to(page, kind)
    page.keyboard.type("Text stat")
    expect(kind).to_have_value("text_stats")
    expect(page.locator("textarea[name=text]")).to_be_visible()
    page.wait_for_timeout(1100)  # a select's type-ahead starts afresh after 1 s without a key
    page.keyboard.type("Simul")
    expect(kind).to_have_value("simulate")
    seconds = page.locator("input[name=seconds]")
    tab_to(page, seconds)
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("60")
    tab_to(page, page.locator("input[name=fail]"))
    page.keyboard.press("Space")
    expect(page.locator("input[name=fail]")).to_be_checked()
    page.keyboard.press("Space")
    expect(page.locator("input[name=fail]")).not_to_be_checked()

    # Queue it; the focus stays on the button.
    tab_to(page, page.get_by_test_id("queue-task"))
    page.keyboard.press("Enter")
    expect(page.locator("#queue-feedback")).to_have_text("Queued.")
    assert_focus_shown(page)
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "running", timeout=30_000)

    # Cancel it from its row: the button says which task it is for.
    cancel = row.get_by_test_id("cancel-task")
    tab_to(page, cancel)
    expect(cancel).to_have_accessible_name("Cancel")
    expect(cancel).to_have_accessible_description(re.compile(r"^simulate .*seconds=60 "))
    page.keyboard.press("Space")
    expect(row).to_have_attribute("data-status", "cancelled", timeout=10_000)

    # Retry it: the focus went from Cancel to the Retry that took its place.
    retry = row.get_by_test_id("retry-task")
    expect(retry).to_be_focused()
    assert_focus_shown(page)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("task-row")).to_have_count(2)
    again = page.get_by_test_id("task-row").first
    expect(again).to_contain_text("seconds=60")
    # The copy's Cancel comes before: back one step, and no need to keep a worker busy for a minute.
    tab_to(page, again.get_by_test_id("cancel-task"), backwards=True)
    page.keyboard.press("Enter")
    expect(again).to_have_attribute("data-status", "cancelled", timeout=10_000)

    # The bell: open, mark read, close; the focus comes back to it.
    bell = page.get_by_test_id("inbox-bell")
    expect(page.get_by_test_id("inbox-unread")).to_have_text("2")
    tab_to(page, bell, backwards=True)
    expect(bell).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("Enter")
    expect(bell).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_test_id("inbox-item")).to_have_count(2)
    tab_to(page, page.get_by_test_id("inbox-mark-read"))
    page.keyboard.press("Space")
    expect(page.get_by_test_id("inbox-unread")).to_have_text("0")
    # Disabled while it worked, the button has the focus back.
    expect(page.get_by_test_id("inbox-mark-read")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("inbox-panel")).to_be_hidden()
    expect(bell).to_be_focused()
    assert_focus_shown(page)

    # Opened again and tabbed out of, the panel closes: it would cover what the focus moves to.
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("inbox-panel")).to_be_visible()
    tab_to(page, page.get_by_role("button", name="Log out"))
    expect(page.get_by_test_id("inbox-panel")).to_be_hidden()
    expect(bell).to_have_attribute("aria-expanded", "false")

    page.keyboard.press("Enter")
    expect(page.locator(".nav__account").get_by_role("link", name="Log in")).to_be_visible()
    expect(page.get_by_test_id("nav-username")).to_have_count(0)


def test_the_bell_is_a_disclosure_not_a_menu(stack: Any, page: Page) -> None:
    """aria-haspopup would have screen readers call it a menu button, and
    its panel is no menu (no arrow keys, no menu items)."""
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    bell = page.get_by_test_id("inbox-bell")
    expect(bell).not_to_have_attribute("aria-haspopup", re.compile(".*"))
    expect(bell).to_have_attribute("aria-controls", "inbox-panel")
    expect(page.get_by_role("region", name="Notifications")).to_have_count(0)
    bell.press("Enter")
    expect(page.get_by_role("region", name="Notifications")).to_be_visible()


# What a screen reader reads out when it changes.
LIVE_REGIONS = '[aria-live]:not([aria-live="off"]), [role="status"], [role="alert"], [role="log"]'

# Records every change to a live region's text, and every value the progress bars take.
LIVE_REGION_WATCH = """
(live) => {
  window.__announced = [];
  window.__progress = [];
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === 'attributes') {
        window.__progress.push(record.target.getAttribute('aria-valuenow'));
        continue;
      }
      const node = record.target.nodeType === 1 ? record.target : record.target.parentElement;
      const region = node && node.closest(live);
      if (region) window.__announced.push((region.id || region.className) + ': ' + region.textContent.trim());
    }
  }).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributeFilter: ['aria-valuenow']
  });
}
"""


def test_a_running_task_is_announced_once_not_at_every_progress_report(stack: Any, page: Page) -> None:
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    expect(page.get_by_test_id("connection-status")).to_have_text("connected")
    page.evaluate(LIVE_REGION_WATCH, LIVE_REGIONS)
    page.locator("input[name=seconds]").fill("3")
    page.get_by_test_id("queue-task").click()
    row = page.get_by_test_id("task-row").first
    expect(row).to_have_attribute("data-status", "running", timeout=30_000)
    bar = row.get_by_role("progressbar", name="Progress of simulate")
    expect(bar).to_have_attribute("aria-valuemin", "0")
    expect(bar).to_have_attribute("aria-valuemax", "100")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.get_by_test_id("notification")).to_contain_text("simulate succeeded")
    values = {value for value in page.evaluate("window.__progress") if value}
    assert len(values) >= 5, f"the bar moved through too few values to tell: {sorted(values)}"

    # The bar sits in no live region: its values are there to be read, not read out.
    in_live_region = row.evaluate(f"row => Boolean(row.closest({LIVE_REGIONS!r}))")
    assert not in_live_region
    announced = page.evaluate("window.__announced")
    said = [text for text in announced if text.split(": ", 1)[-1]]
    # Queued, started, succeeded: a handful of changes for dozens of progress reports.
    assert any(text.endswith("Queued.") for text in said), said
    assert any("simulate started" in text for text in said), said
    assert any("simulate succeeded" in text for text in said), said
    assert not any("%" in text for text in said), said
    assert len(said) <= 5, said


# From the moment the page is parsed (what is there at load is read, not
# announced; the page's deferred script runs after this), records each
# text a live region takes.
LIVE_REGION_LOG = """
(() => {
  window.__said = [];
  document.addEventListener('readystatechange', () => {
    if (document.readyState !== 'interactive') return;
    new MutationObserver((records) => {
      for (const record of records) {
        const node = record.target.nodeType === 1 ? record.target : record.target.parentElement;
        const region = node && node.closest(LIVE_REGIONS);
        if (region) window.__said.push(region.textContent.trim());
      }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
})();
""".replace("LIVE_REGIONS", json.dumps(LIVE_REGIONS))


def said_about_the_connection(page: Page) -> list[str]:
    said: list[str] = page.evaluate("window.__said")
    return [text for text in said if re.search("connect", text, re.IGNORECASE)]


def test_the_connection_is_announced_when_lost_and_when_back_not_at_every_page_load(stack: Any, page: Page) -> None:
    """The badge says connecting, then connected, on every page load: in a
    live region, that was read out each time, for nothing the person did.
    A lost connection and its recovery are announced, once each, however
    many attempts the page makes meanwhile."""
    relay = SocketRelay()
    page.route_web_socket(re.compile(r"/ws/$"), relay.route)
    page.add_init_script(LIVE_REGION_LOG)
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    badge = page.get_by_test_id("connection-status")
    expect(badge).to_have_text("connected")
    # In the accessibility tree, the badge is text, in no live region.
    expect(page.get_by_role("status").filter(has_text=re.compile("connect", re.IGNORECASE))).to_have_count(0)
    expect(page.locator(".card__header")).to_match_aria_snapshot(
        '- heading "Your recent tasks" [level=2]\n- text: connected'
    )
    assert said_about_the_connection(page) == []
    page.reload()  # nor on a reload
    expect(badge).to_have_text("connected")
    assert said_about_the_connection(page) == []

    relay.cut_off()
    expect(badge).to_have_text("reconnecting")
    deadline = time.monotonic() + 30
    while relay.refused < 2:  # two attempts refused: still said once
        assert time.monotonic() < deadline, "the page did not try to reconnect twice in 30 s"
        page.wait_for_timeout(50)  # lets Playwright's loop route the page's attempts
    status = page.get_by_role("status").filter(has_text="Connection lost")
    expect(status).to_have_text("Connection lost. Live updates paused; reconnecting.")

    relay.reconnect()
    expect(badge).to_have_text("connected", timeout=30_000)
    # Said once the connection has held 10 s (STABLE_CONNECTION_MS).
    expect(page.get_by_role("status").filter(has_text="Connected again")).to_have_text(
        "Connected again. Live updates resumed.", timeout=20_000
    )
    assert said_about_the_connection(page) == [
        "Connection lost. Live updates paused; reconnecting.",
        "Connected again. Live updates resumed.",
    ]


def test_a_first_connection_that_does_not_come_is_announced_once_and_so_is_its_arrival(
    private_stack: Any, page: Page
) -> None:
    """The page loads from a web process cut off from Redis, its channel
    layer: every socket it opens is told to try again (1013). The badge said
    "connecting" for ever, and nothing was announced. Now, after
    FIRST_CONNECT_PATIENCE_MS, the badge says it cannot connect and keeps
    trying, a screen reader is told once however many attempts follow, the
    attempts back off, and the connection that comes once Redis is back is
    announced once."""
    target = urlsplit(os.environ["CHANNEL_LAYER_URL"])
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        cut_off = private_stack(CHANNEL_LAYER_URL=proxy.url_for(os.environ["CHANNEL_LAYER_URL"]))
        direct = private_stack()
        page.goto(direct.base_url + "/signup/")
        sign_up(page)  # the session cookie is 127.0.0.1's, whatever the port
        proxy.pause()
        page.add_init_script(LIVE_REGION_LOG)
        page.add_init_script(COUNT_ATTEMPTS)
        page.goto(cut_off.base_url + "/")
        badge = page.get_by_test_id("connection-status")
        expect(badge).to_have_text("cannot connect, retrying", timeout=20_000)
        status = page.get_by_role("status").filter(has_text="Cannot connect")
        expect(status).to_have_text("Cannot connect for live updates. Still trying.")

        deadline = time.monotonic() + 30
        while cut_off.web.log().count("refused for now (closed with 1013)") < 5:  # still said once
            assert time.monotonic() < deadline, "the page did not try five times in 30 s"
            page.wait_for_timeout(100)
        assert said_about_the_connection(page) == ["Cannot connect for live updates. Still trying."]
        # Backing off: 0.5 s, doubling, each less a quarter at most (jitter); the
        # time a refusal takes only adds to them.
        began: list[float] = page.evaluate("window.__attempts")
        waits = [later - earlier for earlier, later in itertools.pairwise(began)]
        assert len(waits) >= 4, waits
        assert all(wait >= 0.75 * 500 * 2**n for n, wait in enumerate(waits[:4])), waits

        problems: list[str] = []
        scan(page, "home, cannot connect", problems)
        assert problems == [], "\n".join(problems)

        proxy.resume()
        expect(badge).to_have_text("connected", timeout=30_000)
        expect(page.get_by_role("status").filter(has_text="Connected")).to_have_text(
            "Connected. Live updates started.", timeout=20_000
        )  # once the connection has held 10 s (STABLE_CONNECTION_MS)
        assert said_about_the_connection(page) == [
            "Cannot connect for live updates. Still trying.",
            "Connected. Live updates started.",
        ]


class HelloThenCut:
    """Stands for a server that accepts, says hello and drops the socket at
    once (an overloaded web process, a proxy that cuts sockets after a few
    seconds): passes the real server's hello to the page, then closes both
    sides. ``flapping = False`` lets sockets through; ``cut()`` drops them."""

    def __init__(self) -> None:
        self.flapping = True
        self.open: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    def route(self, page_side: WebSocketRoute) -> None:
        server = page_side.connect_to_server()
        if not self.flapping:
            self.open.append((page_side, server))
            return

        def from_server(message: str | bytes) -> None:
            page_side.send(message)
            if '"hello"' in str(message):
                page_side.close(code=4000, reason="cut after its hello by the test")
                server.close()  # or the server counts it against the user's sockets

        server.on_message(from_server)

    def cut(self) -> None:
        for page_side, server in self.open:
            page_side.close(code=4000, reason="cut by the test")
            server.close()
        self.open.clear()


def test_a_server_that_drops_each_socket_after_its_hello_is_backed_off_and_said_once(stack: Any, page: Page) -> None:
    """Every hello reset the backoff: against a server that says hello and
    closes, the page reconnected every 0.5 s for ever, and announced "lost"
    and "connected again" at each flap. Now a connection counts as back once
    it has held STABLE_CONNECTION_MS (10 s): the attempts back off, the loss
    is said once, and the recovery once, when the connection holds. A drop
    after that is reconnected at once (0.5 s), as before."""
    sockets = HelloThenCut()
    page.route_web_socket(re.compile(r"/ws/$"), sockets.route)
    page.add_init_script(LIVE_REGION_LOG)
    page.add_init_script(COUNT_ATTEMPTS)
    page.goto(stack.base_url + "/signup/")
    sign_up(page)
    badge = page.get_by_test_id("connection-status")

    deadline = time.monotonic() + 30
    while len(page.evaluate("window.__attempts")) < 5:
        assert time.monotonic() < deadline, "the page did not try five times in 30 s"
        page.wait_for_timeout(100)  # lets Playwright's loop route the page's attempts
    sockets.flapping = False
    began: list[float] = page.evaluate("window.__attempts")
    waits = [later - earlier for earlier, later in itertools.pairwise(began)]
    # 0.5 s, doubling, each less a quarter at most (jitter): not 0.5 s each time.
    assert all(wait >= 0.75 * 500 * 2**n for n, wait in enumerate(waits[:4])), waits
    assert said_about_the_connection(page) == ["Connection lost. Live updates paused; reconnecting."]

    # The next socket (up to 10 s later: 8 s and jitter) is let through; its
    # recovery is said once it has held 10 s.
    status = page.get_by_role("status").filter(has_text="Connected again")
    expect(status).to_have_text("Connected again. Live updates resumed.", timeout=40_000)
    expect(badge).to_have_text("connected")
    assert said_about_the_connection(page) == [
        "Connection lost. Live updates paused; reconnecting.",
        "Connected again. Live updates resumed.",
    ]

    # A connection that held is lost: the first attempt comes at once again.
    attempts = len(page.evaluate("window.__attempts"))
    cut_at: float = page.evaluate("performance.now()")
    sockets.cut()
    deadline = time.monotonic() + 30
    while len(page.evaluate("window.__attempts")) == attempts:
        assert time.monotonic() < deadline, "the page did not reconnect in 30 s"
        page.wait_for_timeout(50)
    again: float = page.evaluate("window.__attempts")[attempts]
    # 0.5 s and its jitter, and this test's own pace; a backoff left where
    # the flapping took it would wait 15 s.
    assert again - cut_at < 3000, again - cut_at
    expect(badge).to_have_text("connected")
    assert said_about_the_connection(page)[-1] == "Connection lost. Live updates paused; reconnecting."
