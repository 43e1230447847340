"""Pages that introduce the API to someone who just started it.

``/`` is a small HTML page that says what runs here and links every entry point; ``/api/``
is the machine-readable version of the same (JSON, one URL per endpoint). Both are public:
they describe the API, not anyone's data, as the schema does. Swagger UI and Redoc are
drf-spectacular's views, with their JavaScript and CSS served by this process from the
``drf-spectacular-sidecar`` package (no CDN: the pages work offline and on a locked-down
network). The schema view answers a browser with plain text so it opens in the tab
instead of downloading as ``application/vnd.oai.openapi``; tools get the OpenAPI media
types as before.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from drf_spectacular.renderers import OpenApiYamlRenderer
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

# What the API offers, in the order a newcomer meets it: (name, URL name, method, what).
ENDPOINTS: list[tuple[str, str, str, str]] = [
    ("jobs", "job-list", "GET, POST", "submit one task; list your jobs"),
    ("bulk", "job-bulk", "POST", "submit many tasks in one request"),
    ("workflows", "workflow-submit", "POST", "submit a chain, group or chord"),
    ("periodic_tasks", "periodic-task-list", "GET, POST", "tasks that run on a schedule"),
    ("tasks", "task-list", "GET", "the tasks you may submit, with their parameters"),
    ("queues", "queue-list", "GET", "queues with live depth, in flight and oldest age"),
    ("schema", "schema", "GET", "the OpenAPI schema (YAML; ?format=json for JSON)"),
    ("docs", "swagger-ui", "GET", "Swagger UI: try every endpoint in the browser"),
    ("redoc", "redoc", "GET", "Redoc: the reference, for reading"),
]


def _endpoints(request: HttpRequest) -> list[dict[str, str]]:
    from django.urls import NoReverseMatch

    listed = []
    for name, url_name, methods, what in ENDPOINTS:
        try:
            url = reverse(url_name)
        except NoReverseMatch:  # an endpoint this deployment does not route
            continue
        listed.append(
            {
                "name": name,
                "url": request.build_absolute_uri(url),
                "path": url,
                "methods": methods,
                "description": what,
            }
        )
    return listed


class ApiRootView(APIView):
    """Every endpoint of the API with its methods and purpose (public)."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, auth=[])
    def get(self, request: Request) -> Response:
        return Response(
            {
                "title": settings.SPECTACULAR_SETTINGS["TITLE"],
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                "authentication": "Authorization: Token <key> (tide token USER prints one)",
                "endpoints": {e["name"]: e["url"] for e in _endpoints(request)},
                "details": _endpoints(request),
            }
        )


def start(request: HttpRequest) -> HttpResponse:
    """The start page: what runs here, how to authenticate, where to go next."""
    return render(
        request,
        "portal/start.html",
        {
            "title": settings.SPECTACULAR_SETTINGS["TITLE"],
            "endpoints": _endpoints(request),
            "admin": getattr(settings, "TIDE_ADMIN_ENABLED", False),
        },
    )


class PlainTextYamlRenderer(OpenApiYamlRenderer):
    """The YAML schema as ``text/plain``, which browsers show instead of downloading."""

    media_type = "text/plain"
    format = "yaml-text"  # not offered through ?format=; chosen for browsers only


class ViewableSchemaView(SpectacularAPIView):
    """The OpenAPI schema; a browser (``Accept: text/html``) reads it in the tab."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        accept = request.META.get("HTTP_ACCEPT", "")
        if "text/html" in accept and "format" not in request.query_params:
            renderer = PlainTextYamlRenderer()
            return renderer, "text/plain; charset=utf-8"
        return super().perform_content_negotiation(request, force)
