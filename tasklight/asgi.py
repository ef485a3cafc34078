"""ASGI entry point: `uvicorn tasklight.asgi:application`."""

from __future__ import annotations

import gc
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasklight.settings")
# A web process counts in its own memory and serves its own /metrics: given a
# workers' PROMETHEUS_MULTIPROC_DIR (one .env for all), prometheus_client
# would write its counts into their files, and the workers' /metrics would
# add them to theirs (tasklight_tasks_created_total twice).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
# Tells the settings this is a web process (its database connections are
# pooled), whatever the environment says: a worker's TASKLIGHT_PROCESS left in
# it (one shell or platform environment for both) gave a web process the
# worker's connections, unpooled and named tasklight-worker.
os.environ["TASKLIGHT_PROCESS"] = "web"
# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from tasklight.asgi_handler import SyncChainASGIHandler  # noqa: E402

# Django's request cycle in one crossing to a reused thread per request (asgi_handler.py).
django_application = SyncChainASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from live.auth import BrowserOriginValidator, WebSocketAuthMiddleware  # noqa: E402
from live.routing import websocket_urlpatterns  # noqa: E402
from tasklight.middleware import LoopbackOnlyWhileDebugASGIMiddleware, RequestIdASGIMiddleware  # noqa: E402

router: Any = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": BrowserOriginValidator(WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns))),  # type: ignore[arg-type]
    }
)
if settings.DEBUG:
    # DEBUG pages for this machine only, whatever address uvicorn was given (the Procfile's 0.0.0.0).
    router = LoopbackOnlyWhileDebugASGIMiddleware(router)
# The request's id around all of it, uvicorn's access line included (tasklight/middleware.py).
application = RequestIdASGIMiddleware(router)

# Everything loaded by now, the URL conf and the views it imports included,
# moves to the garbage collector's permanent generation: a full collection
# then walks only what the process made since. Without this, one took ~130 ms
# on a 2-vCPU machine, stalling every request and socket of the process
# (docs/benchmarks.md).
get_resolver().url_patterns  # noqa: B018  # imports the views now, not at the first request
gc.freeze()
# Open sockets are not frozen, and a full collection walks all of their
# objects (~140 each; ~1.9 s at 10,000 sockets on a 2-vCPU machine). CPython
# starts one every 10 collections of the middle generation (~200,000 new
# objects) once a quarter of the old one is new: seven while 10,000 sockets
# connect, ~6.5 s of pauses in all. Every 100 of them: none then, and no
# change once they are open, where the quarter rule decides (docs/benchmarks.md).
FULL_COLLECTION_EVERY = 100
gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_EVERY)

from tasklight.metrics import gc_pauses  # noqa: E402

gc_pauses.watch()  # /metrics: tasklight_gc_pause_seconds
