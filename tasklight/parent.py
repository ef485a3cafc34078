"""A process of `make run` ends with honcho, its parent.

honcho starts each Procfile process in a session of its own and stops them
on SIGINT and SIGTERM only: killed (SIGKILL), or ended by SIGHUP as its
terminal closes, it left the web process and the worker running, holding
the port, and the next `make run` failed ("address already in use"). The
Makefile sets TASKLIGHT_STOP_WITH_PARENT=1 for them; the kernel then sends
SIGTERM (a graceful stop) when the parent dies: Linux's PR_SET_PDEATHSIG,
as Celery does for its pool processes. The Procfile's lines `exec` their
command, so that the parent is honcho, not a shell. Elsewhere (macOS), or
without the variable (production's own supervisors), nothing is done.

Each also holds its run's lock on the data directory while it lives
(tasklight/make_run.py)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
# Set by tasklight/make_run.py: the lock file of the run.
LOCK_VARIABLE = "TASKLIGHT_RUN_LOCK"

_held: int | None = None


def stop_with_parent() -> None:
    if os.environ.get("TASKLIGHT_STOP_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def hold_run_lock() -> None:
    """In a process of make run: holds the run's lock, shared, until it
    exits, so that no other run starts on its data directory while it
    lives, even after honcho is gone (a worker finishing its tasks). A
    forked child (a pool process) shares the hold."""
    global _held
    path = os.environ.get(LOCK_VARIABLE)
    if not path or _held is not None:
        return
    lock = os.open(path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_SH)
    _held = lock


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True
