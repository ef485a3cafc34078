from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override

from . import views
from .metrics import metrics_view
from .openapi import DocsView, SchemaView

SWAGGER_CSP: dict[str, Any] = {
    **settings.SECURE_CSP,
    "script-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
}

urlpatterns = [
    path("", include("workloads.urls")),
    path("", include("accounts.urls")),
    path("api/", include("workloads.api_urls")),
    path("api/", include("live.api_urls")),
    path("api/auth/", include("accounts.api_urls")),
    # GET and HEAD only: DRF answers OPTIONS with metadata that these views'
    # renderers (YAML, HTML) cannot render (a 500 on /api/docs/). Their
    # errors are JSON (tasklight/openapi.py).
    path("api/schema/", SchemaView.as_view(http_method_names=["get", "head"]), name="schema"),
    # Swagger UI's page boots with an inline script: the only page allowed one.
    path(
        "api/docs/",
        csp_override(SWAGGER_CSP)(DocsView.as_view(url_name="schema", http_method_names=["get", "head"])),
        name="api-docs",
    ),
    path("about/", views.about, name="about"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    # Prometheus; a bearer token guards it (METRICS_TOKEN, docs/observability.md).
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
]

handler404 = "tasklight.errors.not_found"
handler500 = "tasklight.errors.server_error"
