"""Installed with WORKLOAD_MODULES by tests that need a process whose clock
is ahead of the others' by CLOCK_SKEW_SECONDS: Django's ``timezone.now()``
(every timestamp Tasklight takes) reads the machine's clock plus that."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from django.utils import timezone

_SKEW = timedelta(seconds=float(os.environ.get("CLOCK_SKEW_SECONDS", "0")))
_real_now = timezone.now


def _skewed_now() -> datetime:
    return _real_now() + _SKEW


timezone.now = _skewed_now
