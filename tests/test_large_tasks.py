"""A task with a large parameter (text_stats takes up to 1 MiB of text):
what the progress reports carry of it (docs/benchmarks.md, "Large tasks")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workloads import registry
from workloads.registry import PROGRESS_MIN_INTERVAL_SECONDS, Run


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
