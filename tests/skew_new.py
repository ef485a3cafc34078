"""The workload ``versioned`` as a newer release has it: a parameter more."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from workloads.registry import Run, workload


class VersionedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = "abc"
    shout: bool = False


@workload(title="Versioned")
def versioned(params: VersionedParams, run: Run) -> dict[str, Any]:
    """Echoes its text, shouted if asked."""
    return {"text": params.text.upper() if params.shout else params.text, "version": "new"}
