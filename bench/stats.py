"""Percentiles and the printing of figures."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of latencies given in seconds, in milliseconds."""
    return {
        "n": float(len(seconds)),
        "p50": percentile(seconds, 50) * 1000,
        "p95": percentile(seconds, 95) * 1000,
        "p99": percentile(seconds, 99) * 1000,
        "max": (max(seconds) * 1000) if seconds else math.nan,
    }


def fmt_ms(summary: dict[str, float]) -> str:
    return (
        f"p50 {summary['p50']:.1f} ms, p95 {summary['p95']:.1f} ms, p99 {summary['p99']:.1f} ms, "
        f"max {summary['max']:.1f} ms (n={int(summary['n'])})"
    )
