"""A process of `make run` ends with honcho, its parent.

honcho starts each Procfile process in a session of its own and stops them
on SIGINT and SIGTERM only: killed (SIGKILL), or ended by SIGHUP as its
terminal closes, it left the web process and the worker running, holding
the port, and the next `make run` failed ("address already in use"). The
Makefile sets TASKLIGHT_STOP_WITH_PARENT=1 for them; the kernel then sends
SIGTERM (a graceful stop) when the parent dies: Linux's PR_SET_PDEATHSIG,
as Celery does for its pool processes. The Procfile's lines `exec` their
command, so that the parent is honcho, not a shell. Elsewhere (macOS), or
without the variable (production's own supervisors), nothing is done."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    if os.environ.get("TASKLIGHT_STOP_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
