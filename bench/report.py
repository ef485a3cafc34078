"""What a measurement hands back: its figures, printed lines, targets and the
command line that reproduces it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass
class Target:
    label: str
    value: float
    limit: float
    at_least: bool  # True: value >= limit; False: value <= limit (< for "under")
    strict: bool = False

    @property
    def met(self) -> bool | None:
        if math.isnan(self.value):
            return None
        if self.at_least:
            return self.value >= self.limit
        return self.value < self.limit if self.strict else self.value <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.at_least else ("<" if self.strict else "<=")
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"{self.label}: {_number(self.value)} (target {sign} {_number(self.limit)}): {verdict}"


@dataclass
class MedianTarget:
    """One target of a measurement that ran several times: judged by the
    median of the runs' values."""

    name: str
    runs: list[Target]

    @property
    def target(self) -> Target:
        values = [t.value for t in self.runs if not math.isnan(t.value)]
        middle = statistics.median(values) if values else math.nan
        first = self.runs[0]
        return Target(f"{first.label}, median of {len(values)} runs", middle, first.limit, first.at_least, first.strict)

    def describe(self) -> str:
        each = ", ".join(_number(t.value) for t in self.runs)
        return f"{self.target.describe()} (each run: {each})"

    def as_json(self) -> dict[str, Any]:
        target = self.target
        return {
            "name": self.name,
            "label": target.label,
            "value": target.value,
            "limit": target.limit,
            "met": target.met,
            "runs": [t.value for t in self.runs],
        }


@dataclass
class Result:
    name: str
    command: str
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    error: str | None = None

    def say(self, line: str) -> None:
        """Prints a line as it is measured, and keeps it for the summary."""
        self.lines.append(line)
        print(f"  {line}", flush=True)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "figures": self.figures,
            "targets": [{"label": t.label, "value": t.value, "limit": t.limit, "met": t.met} for t in self.targets],
            "error": self.error,
        }
