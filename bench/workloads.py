"""The benchmark's workload (WORKLOAD_MODULES=bench.workloads): does nothing,
so that what is measured is Tasklight's own path, not the work."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from workloads.registry import Run, workload


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@workload(title="No-op", soft_time_limit=10, time_limit=20)
def noop(params: NoopParams, run: Run) -> dict[str, Any]:
    """Returns at once: a benchmark's no-op."""
    return {}
