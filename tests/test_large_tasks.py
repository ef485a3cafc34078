"""A task with a large parameter (text_stats takes up to 1 MiB of text):
what the progress reports and the home page carry of it
(docs/benchmarks.md, "Large tasks")."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from workloads import registry
from workloads.builtin import MAX_TEXT_BYTES
from workloads.registry import PROGRESS_MIN_INTERVAL_SECONDS, Run
from workloads.services import create_task
from workloads.views import PAGE_TEXT_CHARS


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
