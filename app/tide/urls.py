"""URL map: the jobs API under /api/, its OpenAPI schema, probes and metrics at the root."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from tide.health import views as health

urlpatterns = [
    path("api/", include("tide.jobs.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]
