"""The Celery application: `celery -A tasklight worker`."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")

app = Celery("tasklight")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _tune_embedded_broker() -> None:
    # kombu's SQLAlchemy transport hands every transport option to
    # create_engine(), so its polling interval can only be set on the class
    # (default 1 s, far too slow for a live demo).
    from django.conf import settings
    from kombu.transport import sqlalchemy

    sqlalchemy.Transport.polling_interval = settings.EMBEDDED_BROKER_POLLING_INTERVAL


_tune_embedded_broker()
