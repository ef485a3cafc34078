"""Start-up objects are moved out of the garbage collector's way in the web
process and in every worker process (tasklight/asgi.py, tasklight/celery.py):
a full collection walks only what the process made since it started, so it
no longer stalls every request and socket of a web process (~130 ms each on
a 2-vCPU machine, docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> dict[str, int]:
    """Runs ``code`` in a fresh interpreter; it prints a JSON object last."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tasklight.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_web_process_freezes_what_start_up_loaded() -> None:
    seen = run_python(
        "import gc, json, sys\n"
        "import tasklight.asgi\n"
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'walked': len(gc.get_objects()),"
        " 'views_loaded': int('workloads.api' in sys.modules)}))"
    )
    # The views are imported before the freeze, not at the first request.
    assert seen["views_loaded"] == 1
    assert seen["frozen"] > 100_000
    # What a full collection walks now: a small part of what it walked before.
    assert seen["walked"] < seen["frozen"] / 10


def test_each_worker_process_freezes_what_start_up_loaded() -> None:
    # The signals Celery sends in a pool process once it started, and in the
    # main process once its pool is up.
    for signal in ("worker_process_init", "worker_ready"):
        seen = run_python(
            "import gc, json, sys\n"
            "sys.argv = ['celery', '-A', 'tasklight', 'worker']\n"
            "import django; django.setup()\n"
            "from tasklight.celery import app\n"
            "from celery import signals\n"
            "before = gc.get_freeze_count()\n"
            f"signals.{signal}.send(sender=None)\n"
            "print(json.dumps({'before': before, 'frozen': gc.get_freeze_count(), 'walked': len(gc.get_objects())}))"
        )
        assert seen["before"] == 0, signal
        assert seen["frozen"] > 50_000, signal
        assert seen["walked"] < seen["frozen"] / 10, signal
