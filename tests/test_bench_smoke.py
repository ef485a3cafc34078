"""`make bench`'s harness runs: smoke runs of the throughput, latency and
sockets measurements with tiny numbers (a benchmark is not a test; this only checks that the
harness starts the stack, measures, prints and cleans up)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from .stack import ROOT

pytestmark = pytest.mark.stack


def run_bench(*options: str) -> str:
    """``python -m bench.run`` with these options; its output, once it exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def quick_run(measurement: str, tmp_path: Path, *options: str) -> tuple[str, dict[str, Any], str]:
    """One quick run of one measurement under a name of its own: its output,
    its result (from --json) and the name, for ``assert_nothing_left``."""
    name = f"tasklight-bench-smoke-{uuid.uuid4().hex[:8]}"
    figures = tmp_path / "figures.json"
    output = run_bench(
        "--quick", "--only", measurement, *options, "--log-dir", str(tmp_path), "--name", name, "--json", str(figures)
    )
    [result] = json.loads(figures.read_text())["results"]
    assert result["error"] is None, result
    return output, result, name


def assert_nothing_left(name: str) -> None:
    """No process of the run named ``name`` and none of its databases remain."""
    leftovers = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True, check=False).stdout
    assert not leftovers.strip(), leftovers
    databases = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SELECT datname FROM pg_database"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [database for database in databases if database.startswith(name.replace("-", "_"))], databases


def test_quick_throughput_prints_both_rates_and_their_ratio_per_run_and_the_median(tmp_path: Path) -> None:
    name = f"tasklight-bench-smoke-{uuid.uuid4().hex[:8]}"
    output = run_bench(
        "--quick",
        "--only",
        "throughput",
        "--tasks",
        "60",
        "--users",
        "2",
        "--drain-tasks",
        "300",
        "--runs",
        "2",
        "--log-dir",
        str(tmp_path),
        "--name",
        name,
    )
    assert re.search(r"bare Celery drain .*: \d+ tasks/s \(300/300 drained", output), output
    assert re.search(r"Tasklight end to end .*: \d+ tasks/s \(60/60 tasks\)", output), output
    assert len(re.findall(r"ratio: \d+\.\d+ of the bare drain rate", output)) == 2, output
    assert "== throughput (run 1 of 2) ==" in output and "== throughput (run 2 of 2) ==" in output, output
    reproduce = (
        "reproduce: python -m bench.run --only throughput --tasks 60 --users 2 --drain-tasks 300 "
        "--worker-concurrency 2 --runs 2"
    )
    assert output.count(reproduce) == 2, output
    # Each run logs in a folder of its own and reads its own figures there.
    for run in (1, 2):
        publish_log = (tmp_path / f"throughput-{run}" / "bare-publish.log").read_text()
        assert publish_log.count("published") == 1, publish_log
    summary = output.split("== summary ==")[1]
    assert re.search(
        r"throughput ratio \(Tasklight / bare Celery\), median of 2 runs: [\d.]+ .*\(each run: [\d.]+, [\d.]+\)",
        summary,
    ), summary
    # Nothing of the run is left behind: its processes and databases are gone.
    assert_nothing_left(name)


def test_quick_latency_measures_both_web_topologies_against_the_raw_path(tmp_path: Path) -> None:
    output, result, name = quick_run("latency", tmp_path, "--duration", "2")
    assert result["figures"]["raw_latency_ms"]["n"] == 100, result
    for key in ("one_web", "ws_web"):
        measured = result["figures"][key]
        assert measured["completed"] == measured["scheduled"] == 100, measured
        assert measured["latency_ms"]["n"] == 100, measured
        assert measured["p99_ratio"] > 0, measured
    assert [target["label"] for target in result["targets"]] == [
        "latency p99 ratio (Tasklight / raw path), one web process for the POSTs and the sockets",
        "latency p99 ratio (Tasklight / raw path), sockets on a web process of their own, the POSTs on another",
    ], result
    # The sockets of the second measurement were on a web process of its own.
    assert (tmp_path / "latency-ws-web.log").exists(), sorted(p.name for p in tmp_path.iterdir())
    assert "reproduce: python -m bench.run --only latency --rate 50 --duration 2 --latency-users 2" in output
    assert_nothing_left(name)


def test_quick_sockets_with_churn_counts_reconnects_probe_events_and_collections(tmp_path: Path) -> None:
    options = ("--sockets", "40", "--socket-users", "4", "--probe-tasks", "5")
    churn = ("--socket-churn", "10", "--churn-seconds", "2")
    output, result, name = quick_run("sockets", tmp_path, *options, *churn)
    measured = result["figures"]
    assert measured["held"] == 40, measured
    assert measured["probe_latency_ms"]["n"] == 5, measured
    # 2 s at 10/s: 20 sockets closed and opened again, 20 probe tasks heard meanwhile.
    assert measured["churned"] == 20, measured
    assert measured["churn_handshake_ms"]["n"] == 20, measured
    assert measured["churn_probe_latency_ms"]["n"] == 20, measured
    # The web process's collections, read from its /metrics, are figures (0 or more).
    for phase in ("gc_while_opening", "gc_while_churning"):
        assert measured[phase]["count"] >= 0 and measured[phase]["longest"] > 0, measured
    # The probe's tasks went to a second web process during the churn.
    assert (tmp_path / "sockets-api-web.log").exists(), sorted(p.name for p in tmp_path.iterdir())
    assert f"reproduce: python -m bench.run --only sockets {' '.join(options + churn)}" in output, output
    assert_nothing_left(name)


@pytest.mark.django_db(transaction=True)
def test_the_requests_counted_under_valgrind_answer_as_expected() -> None:
    """`bench.run --only instructions` runs `bench.asgi_requests` under
    valgrind (minutes); here each kind runs plainly, a few times: it exits
    non-zero when a request does not answer as expected."""
    from .conftest import delete_queue, stack_env

    # A queue of its own: the session's workers must not run (and write)
    # these tasks while the test's database is emptied after it.
    queue = f"tasklight-test-{uuid.uuid4().hex[:8]}"
    try:
        requests_answer_as_expected(
            stack_env(WORKLOAD_MODULES="bench.workloads", LOG_LEVEL="ERROR", TASKLIGHT_QUEUE=queue)
        )
    finally:
        delete_queue(queue)


def requests_answer_as_expected(env: dict[str, str]) -> None:
    for kind in ("health", "list", "missing", "post"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.asgi_requests", kind, "3"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    # Past the rate limit a POST answers 429, not the 202 expected.
    done = subprocess.run(
        [sys.executable, "-m", "bench.asgi_requests", "post", "1"],
        cwd=ROOT,
        env={**env, "TASK_RATE_LIMIT": "1/min"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "answered 429, not 202 (request 2)" in done.stderr
