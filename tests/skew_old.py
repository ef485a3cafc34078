"""The workload ``versioned`` as an older release had it: one parameter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from workloads.registry import Run, workload


class VersionedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = "abc"


@workload(title="Versioned")
def versioned(params: VersionedParams, run: Run) -> dict[str, Any]:
    """Echoes its text."""
    return {"text": params.text, "version": "old"}
