"""Request metrics, labelled by URL route (not path, so job ids do not explode labels)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from tide.health.metrics import HTTP_DURATION, HTTP_REQUESTS, JOBS_REJECTED


class PrometheusMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        # Probes are answered before URL resolution (ProbeMiddleware): label them by path.
        route = match.route if match else request.path_info.lstrip("/") or "unmatched"
        if not match and route not in ("healthz", "readyz", "metrics"):
            route = "unmatched"
        HTTP_DURATION.labels(request.method, route).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response


class BodySizeLimitMiddleware:
    """Answer 413 for a declared body above ``TIDE_MAX_REQUEST_BYTES`` before reading it.

    Django's own limit only trips when the body is read, and reports it as a 400; a
    client sending too much deserves the status that says so.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from django.conf import settings

        self.get_response = get_response
        self.limit = settings.TIDE_MAX_REQUEST_BYTES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.http import JsonResponse

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.limit:
            JOBS_REJECTED.labels("payload_too_large").inc()
            return JsonResponse(
                {
                    "error": "payload_too_large",
                    "detail": f"Request body is {length} bytes; the limit is {self.limit}.",
                },
                status=413,
            )
        return self.get_response(request)


class QueryStringMiddleware:
    """Answer 400 for a query string that no filter can match: a NUL character.

    PostgreSQL refuses NUL in a query's text, so ``?queue=%00`` would otherwise reach
    the database and fail there (a 500). No name Tide stores holds one, so the request
    can only be a mistake or a probe; the answer names the parameter.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.http import JsonResponse

        if "%00" in request.META.get("QUERY_STRING", ""):
            for name, values in request.GET.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    JOBS_REJECTED.labels("invalid").inc()
                    return JsonResponse(
                        {
                            "error": "invalid",
                            "detail": {
                                name.replace("\x00", "\\u0000"): "Query parameters must not "
                                "contain a NUL character (%00)."
                            },
                        },
                        status=400,
                    )
        return self.get_response(request)


class ChunkedBody:
    """WSGI wrapper: give Django the body of a ``Transfer-Encoding: chunked`` request.

    gunicorn decodes chunked bodies on ``wsgi.input`` but, as HTTP/1.1 says, sends no
    ``CONTENT_LENGTH`` with them; Django reads exactly ``CONTENT_LENGTH`` bytes, so it saw
    an empty body. This reads the body (at most the platform's limit and one byte, so an
    endless stream costs nothing more) and states its length; ``BodySizeLimitMiddleware``
    answers 413 past the limit as for any other body.
    """

    def __init__(self, application: Any, limit: int) -> None:
        self.application = application
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            body = environ["wsgi.input"].read(self.limit + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)


class ProbeMiddleware:
    """Answer ``/healthz``, ``/readyz`` and ``/metrics`` before Django checks the Host.

    Kubelet probes and Prometheus scrapes address the pod by IP, which ``ALLOWED_HOSTS``
    cannot list; the Host check exists to stop poisoned absolute URLs, and these answers
    build none. Everything else still goes through the full middleware stack.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from tide.health import views

        self.get_response = get_response
        self.routes: dict[str, Callable[[HttpRequest], HttpResponse]] = {
            "/healthz": views.healthz,
            "/readyz": views.readyz,
            "/metrics": views.metrics,
        }

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.routes.get(request.path_info)
        if view is not None and request.method in ("GET", "HEAD"):
            return view(request)
        return self.get_response(request)
