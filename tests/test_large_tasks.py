"""A task with a large parameter (text_stats takes up to 1 MiB of text):
what the progress reports and the home page carry of it
(docs/benchmarks.md, "Large tasks")."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from workloads import registry
from workloads.builtin import MAX_TEXT_BYTES
from workloads.models import Task, TaskStatus
from workloads.registry import PROGRESS_MIN_INTERVAL_SECONDS, Run
from workloads.services import create_task
from workloads.views import PAGE_TEXT_CHARS

from .stack import Account

MEGABYTE_TEXT = ("every word counts " * (MAX_TEXT_BYTES // 18 + 1))[:MAX_TEXT_BYTES]


def test_a_run_sends_no_progress_in_its_first_quarter_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(registry, "time", SimpleNamespace(monotonic=lambda: clock.now))
    reported: list[int] = []
    run = Run(reported.append)

    run.progress(50)
    clock.now += PROGRESS_MIN_INTERVAL_SECONDS - 0.01
    run.progress(60)
    assert reported == []  # a task that ends now has only its terminal event

    clock.now += 0.02
    run.progress(70)
    assert reported == [70]


def initial_tasks(html: str) -> list[dict[str, object]]:
    start = html.index('<script id="initial-tasks" type="application/json">') + len(
        '<script id="initial-tasks" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


@pytest.mark.django_db
def test_the_home_page_carries_what_it_shows_of_a_megabyte_text_and_the_api_all_of_it(
    alice: User, alice_api: APIClient
) -> None:
    text = ("every word counts " * (MAX_TEXT_BYTES // 18 + 1))[:MAX_TEXT_BYTES]
    tasks = [create_task(owner=alice, kind="text_stats", params={"text": text}) for _ in range(3)]
    browser = Client()
    browser.force_login(alice)

    page = browser.get("/")

    assert page.status_code == 200
    # Three megabytes of text before: now a few kilobytes of page.
    assert len(page.content) < 60_000
    shown = initial_tasks(page.content.decode())
    assert [task["id"] for task in shown] == [str(task.id) for task in reversed(tasks)]
    assert shown[0]["params"] == {"text": text[: PAGE_TEXT_CHARS - 1] + "\u2026"}
    assert alice_api.get(f"/api/tasks/{tasks[0].id}/").json()["params"] == {"text": text}


@pytest.mark.django_db
def test_short_parameters_reach_the_page_as_they_are(alice: User) -> None:
    text = "x" * PAGE_TEXT_CHARS
    create_task(owner=alice, kind="text_stats", params={"text": text})
    browser = Client()
    browser.force_login(alice)

    assert initial_tasks(browser.get("/").content.decode())[0]["params"] == {"text": text}


@contextlib.contextmanager
def read_from_database() -> Iterator[list[int]]:
    """The length of every text and bytes value the queries run inside read
    from the database (the rows as the driver hands them to Django)."""
    sizes: list[int] = []

    def count(rows: Any) -> None:
        for row in rows:
            sizes.extend(len(value) for value in row if isinstance(value, str | bytes))

    def counted(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        answer = execute(sql, params, many, context)
        cursor = context["cursor"]
        raw = cursor.cursor

        def fetchone() -> Any:
            row = raw.fetchone()
            count([row] if row is not None else [])
            return row

        def fetchmany(size: int = 1) -> Any:
            rows = raw.fetchmany(size)
            count(rows)
            return rows

        def fetchall() -> Any:
            rows = raw.fetchall()
            count(rows)
            return rows

        cursor.fetchone, cursor.fetchmany, cursor.fetchall = fetchone, fetchmany, fetchall
        return answer

    with connection.execute_wrapper(counted):
        yield sizes


def signed_in(user: User) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.mark.django_db
def test_the_home_page_reads_from_the_database_only_what_it_shows_of_a_megabyte_text(alice: User) -> None:
    for _ in range(3):
        create_task(owner=alice, kind="text_stats", params={"text": MEGABYTE_TEXT})
    browser = signed_in(alice)

    with read_from_database() as sizes:
        page = browser.get("/")

    assert page.status_code == 200
    shown = initial_tasks(page.content.decode())[0]["params"]
    assert shown == {"text": MEGABYTE_TEXT[: PAGE_TEXT_CHARS - 1] + "\u2026"}
    # The page's queries read a few kilobytes, not the 3 MiB of text (before:
    # every task's whole params, cut in Python).
    assert sum(sizes) < 20_000, sorted(sizes)[-5:]


@pytest.mark.django_db
def test_a_megabyte_result_reaches_the_page_as_far_as_it_shows_and_the_api_whole(
    alice: User, alice_api: APIClient
) -> None:
    task = create_task(owner=alice, kind="text_stats", params={"text": "short"})
    result = {"echo": MEGABYTE_TEXT, "words": [["every", 58255]]}
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.SUCCEEDED, progress=100, result=result)
    browser = signed_in(alice)

    with read_from_database() as sizes:
        page = browser.get("/")

    # The page shows at most the first 2,000 characters of a result's JSON
    # (static/tasklight/app.js, renderRow): those are the same.
    shown = initial_tasks(page.content.decode())[0]["result"]
    assert shown == {"echo": MEGABYTE_TEXT[:1999] + "\u2026", "words": [["every", 58255]]}
    assert json.dumps(shown)[:2000] == json.dumps(result)[:2000]
    assert sum(sizes) < 20_000, sorted(sizes)[-5:]
    assert alice_api.get(f"/api/tasks/{task.id}/").json()["result"] == result
    assert alice_api.get("/api/tasks/").json()["results"][0]["result"] == result


def cut(value: Any, chars: int) -> Any:
    """The page's cut, as it was made in Python before the database made it."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[: chars - 1] + "\u2026"
    if isinstance(value, dict):
        return {key: cut(item, chars) for key, item in value.items()}
    if isinstance(value, list):
        return [cut(item, chars) for item in value]
    return value


@pytest.mark.django_db
def test_the_database_cuts_every_string_as_the_page_did_at_any_depth(alice: User) -> None:
    # Characters, not bytes or UTF-16 units: an astral emoji is one, as in
    # Python; escapes JSON needs are one character each; keys stay whole.
    emoji = "\U0001f600" * 700
    escapes = '"\\\n\t\u0001/' * 100
    params = {
        "text": "a" * 501,
        "exactly": "b" * 500,
        "emoji": emoji,
        "escapes": escapes,
        "é" * 600: "key kept whole",
        "nested": {"deeper": [["c" * 900, 1, 2.5, None, True, False], {}, [], "short"], "n": -7},
        "numbers": [0, 1e-7, 12345678901234567890, 3.141592653589793],
    }
    result = ["d" * 5000, {"a": "e" * 2000, "b": "f" * 2001}, "g" * 60]
    Task.objects.create(owner=alice, kind="text_stats", params=params, status=TaskStatus.SUCCEEDED, result=result)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tasklight_cut_strings(params, 500)::text, tasklight_cut_strings(result, 2000)::text,"
            " tasklight_cut_strings(NULL, 5) FROM workloads_task"
        )
        cut_params, cut_result, null = cursor.fetchone()
        given = ['"long string"', "1.50", "null", "true", "{}", "[]", '"short"']
        cursor.execute(
            "SELECT tasklight_cut_strings(value::jsonb, 5)::text FROM unnest(%s::text[]) WITH ORDINALITY"
            " AS given(value, position) ORDER BY position",
            [given],
        )
        scalars = [row[0] for row in cursor.fetchall()]

    assert json.loads(cut_params) == cut(params, 500)
    assert json.loads(cut_result) == cut(result, 2000)
    assert null is None
    assert scalars == ['"long\u2026"', "1.50", "null", "true", "{}", "[]", '"short"']
    shown: dict[str, Any] = initial_tasks(signed_in(alice).get("/").content.decode())[0]
    assert (shown["params"], shown["result"]) == (cut(params, 500), cut(result, 2000))
    # Nothing but strings changes: the numbers read back as PostgreSQL stored them.
    assert shown["params"]["numbers"] == Task.objects.get().params["numbers"]


# Accented letters (2 bytes of UTF-8), CJK (3) and an emoji beyond the BMP
# (4 bytes; a surrogate pair, 12 bytes, as JSON escapes).
NON_ASCII_WORDS = "café crème 東京の天気 😀 "
NON_ASCII_TEXT = NON_ASCII_WORDS * (MAX_TEXT_BYTES // len(NON_ASCII_WORDS.encode()))


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_non_ascii_text_goes_over_the_socket_as_utf8_not_as_escapes(stack: Any) -> None:
    """WebSocket text frames are UTF-8. Channels' encode_json escaped every
    character outside ASCII (\\u00e9, \\ud83d\\ude00): each frame of a 1 MiB
    text of these words was 2.3 MB. Now each character goes as itself, and
    the frame is the text's size plus the task's other fields."""
    alice = Account.sign_up(stack.base_url)
    text_bytes = len(NON_ASCII_TEXT.encode())
    with alice.socket() as live:
        task = alice.queue("text_stats", text=NON_ASCII_TEXT)
        raw_frames = []
        while True:
            raw = live.ws.recv(timeout=60)
            frame = json.loads(raw)
            if frame["type"] == "event":
                raw_frames.append(raw)
                if frame["event"] in ("task.succeeded", "task.failed"):
                    break
    assert frame["event"] == "task.succeeded" and frame["task"]["id"] == task["id"]
    assert [json.loads(raw)["event"] for raw in raw_frames] == ["task.queued", "task.started", "task.succeeded"]
    for raw in raw_frames:
        assert json.loads(raw)["task"]["params"] == {"text": NON_ASCII_TEXT}  # intact, the emoji too
        assert "\\u" not in raw  # no escape anywhere: the top words are non-ASCII too
        assert text_bytes < len(raw.encode()) < text_bytes + 2_000
    assert frame["task"]["result"]["top_words"][0] == ["café", MAX_TEXT_BYTES // len(NON_ASCII_WORDS.encode())]


@pytest.mark.stack
@pytest.mark.django_db(transaction=True)
def test_a_pong_echoing_a_lone_surrogate_keeps_its_escape(stack: Any) -> None:
    """A ping's id is echoed as the client sent it, and "\\ud800" is JSON;
    it has no UTF-8, so that one frame is written with JSON's escapes."""
    alice = Account.sign_up(stack.base_url)
    with alice.socket() as live:
        live.ws.send('{"type": "ping", "id": ["\\ud800", "café"]}')
        raw = live.ws.recv(timeout=30)
        assert json.loads(raw) == {"type": "pong", "id": ["\ud800", "café"]}
        assert raw == '{"type": "pong", "id": ["\\ud800", "caf\\u00e9"]}'
        live.ws.send('{"type": "ping", "id": "café"}')  # the socket goes on, in UTF-8 again
        assert live.ws.recv(timeout=30) == '{"type": "pong", "id": "café"}'
