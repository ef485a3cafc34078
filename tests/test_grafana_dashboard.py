"""docs/grafana-dashboard.json asks only for metrics Tasklight exports, under
the names Prometheus sees (counters end in _total, histograms in _bucket)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from tasklight import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exported_names() -> set[str]:
    names: set[str] = set()
    collectors: list[Any] = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    collectors += [metrics.TaskStateCollector(), metrics.gc_pauses]
    for collector in collectors:
        for family in collector.describe():  # describe(): no database query
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_every_panel_has_a_title_and_a_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["title"]
        assert [target["expr"] for target in panel["targets"] if target["expr"].strip()], panel["title"]


def test_every_metric_the_dashboard_asks_for_is_exported() -> None:
    exported = exported_names()
    assert "tasklight_tasks_created_total" in exported  # the names are computed, not assumed
    dashboard = json.loads(DASHBOARD.read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\btasklight_[a-z_]+", target["expr"])
    }
    assert asked, "the dashboard queries no Tasklight metric"
    assert asked <= exported, f"not exported: {sorted(asked - exported)}"
    # And every family Tasklight exports has a panel.
    assert {family(name) for name in exported} <= {family(name) for name in asked}


def family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def web_only_names() -> set[str]:
    """What only a web process's /metrics serves (docs/observability.md): a
    worker's endpoint serves every family of tasklight.metrics too, the
    unlabelled ones at zero."""
    names: set[str] = set()
    for collector in (metrics.TaskStateCollector(), metrics.gc_pauses):
        for family in collector.describe():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_a_query_per_process_draws_only_web_processes() -> None:
    """The open sockets per instance also drew a flat 0 line for each worker's
    metrics endpoint, which serves the web's unlabelled gauge at zero."""
    web_only = web_only_names()
    assert "tasklight_gc_longest_pause_seconds" in web_only
    dashboard = json.loads(DASHBOARD.read_text())
    per_instance = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if re.search(r"\bby \([^)]*\binstance\b", target["expr"])
    ]
    assert any("tasklight_open_sockets" in expr for _, expr in per_instance)
    for title, expr in per_instance:
        if set(re.findall(r"\btasklight_[a-z_]+", expr)) <= web_only:
            continue
        joined = re.findall(r"\band on \(job, instance\) (tasklight_[a-z_]+)", expr)
        assert set(joined) & web_only, f"{title}: {expr} draws each worker too"
