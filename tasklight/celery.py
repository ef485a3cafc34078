"""The Celery application: `celery -A tasklight worker`."""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")
# `celery -A tasklight worker`: the settings give a worker's pool processes
# persistent database connections (tasklight/settings.py).
if "worker" in sys.argv[1:]:
    os.environ.setdefault("TASKLIGHT_PROCESS", "worker")

app = Celery("tasklight")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _tune_embedded_broker(**kwargs: object) -> None:
    # kombu's SQLAlchemy transport hands every transport option to
    # create_engine(), so its polling interval can only be set on the class
    # (default 1 s, far too slow for a live demo). Only workers poll. Done at
    # worker start, not at import: importing this module must not load the
    # settings (tasklight/asgi.py sets the environment first).
    from django.conf import settings
    from kombu.transport import sqlalchemy

    sqlalchemy.Transport.polling_interval = settings.EMBEDDED_BROKER_POLLING_INTERVAL
