"""URL map: a start page at ``/``, the jobs API under ``/api/`` (its root lists every
endpoint), the OpenAPI schema with Swagger UI and Redoc, probes and metrics at the root,
and Django's admin where ``TIDE_ADMIN_ENABLED`` routes it (local mode; behind its login)."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

from tide.health import views as health
from tide.portal import views as portal

urlpatterns = [
    path("", portal.start, name="start"),
    path("api/", portal.ApiRootView.as_view(), name="api-root"),
    path("api/", include("tide.jobs.api.urls")),
    path("api/schema/", portal.ViewableSchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="portal/redoc.html"),
        name="redoc",
    ),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]

# A URL no route matches (``/api/jobs/0.5/``: not an id) answers like any API refusal,
# JSON, not Django's HTML page; an unhandled error too.
handler404 = "tide.jobs.api.errors.not_found"
handler500 = "tide.jobs.api.errors.server_error"

if getattr(settings, "TIDE_ADMIN_ENABLED", False):
    urlpatterns.append(path("admin/", admin.site.urls))
