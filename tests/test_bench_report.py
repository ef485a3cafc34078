"""`make bench`'s summary: a measurement that ran several times is judged by
the median of its runs (docs/benchmarks.md)."""

from __future__ import annotations

import math
import os
import time

from bench import procs
from bench.report import Result, Target
from bench.run import medians, summary


def latency_run(ratio: float) -> Result:
    result = Result("latency", "python -m bench.run --only latency")
    result.targets.append(Target("latency p99 ratio (Tasklight / raw path)", ratio, 2, at_least=False))
    return result


def test_a_target_of_several_runs_is_judged_by_their_median() -> None:
    runs = [latency_run(2.6), latency_run(1.7), latency_run(2.2)]
    [median] = medians(runs)
    assert median.target.value == 2.2 and median.target.met is False
    runs[2] = latency_run(1.9)
    [median] = medians(runs)
    assert median.target.value == 1.9 and median.target.met is True
    lines = summary(runs)
    assert lines[-1] == (
        "latency: latency p99 ratio (Tasklight / raw path), median of 3 runs: 1.9 (target <= 2): met "
        "(each run: 2.6, 1.7, 1.9)"
    )


def test_a_run_without_a_value_is_left_out_of_the_median_and_one_run_has_none() -> None:
    [median] = medians([latency_run(math.nan), latency_run(3.0), latency_run(1.0)])
    assert median.target.value == 2.0 and median.target.label.endswith("median of 2 runs")
    assert medians([latency_run(1.5)]) == []
    [alone] = medians([latency_run(math.nan), latency_run(math.nan)])
    assert alone.target.met is None  # "not measured", never "met"


def test_the_share_of_the_cores_in_use_sees_a_core_kept_busy() -> None:
    cores = os.cpu_count() or 1
    before = procs.machine_cpu()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # one core busy for half a second
        pass
    share = procs.busy_share(before, procs.machine_cpu())
    # At least most of one core of all of them; never more than all of them.
    assert 0.8 / cores <= share <= 1.0, share
