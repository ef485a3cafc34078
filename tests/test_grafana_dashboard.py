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
