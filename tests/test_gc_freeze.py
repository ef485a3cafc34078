"""Start-up objects are moved out of the garbage collector's way in the web
process and in every worker process (tasklight/asgi.py, tasklight/celery.py):
a full collection walks only what the process made since it started, so it
no longer stalls every request and socket of a web process (~130 ms each on
a 2-vCPU machine, docs/benchmarks.md)."""

from __future__ import annotations

from .stack import run_python


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
