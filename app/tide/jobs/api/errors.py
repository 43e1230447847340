"""One error shape for every refusal: ``{"error": code, "detail": …}`` with a 4xx/5xx.

DRF's own errors (validation, authentication, not found) are reshaped here too, so a
client handles one format. Domain errors from ``services`` map to their status codes.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tide.health.metrics import JOBS_REJECTED
from tide.jobs.registry import ArgumentsError
from tide.jobs.services import BrokerUnavailable, BulkPartlyQueued, JobConflict, UnknownTask


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def _refuse(code: str, detail: Any, status_code: int, **extra: Any) -> Response:
    JOBS_REJECTED.labels(code).inc()
    return Response({"error": code, "detail": detail, **extra}, status=status_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, UnknownTask):
        return _refuse(
            "unknown_task",
            f"No registered task is called {exc.name!r}.",
            400,
            known_tasks=exc.known,
            **({"loc": exc.loc} if exc.loc else {}),
        )
    if isinstance(exc, ArgumentsError):
        return _refuse(
            "invalid_arguments",
            f"The arguments do not fit {exc.task_name}.",
            400,
            errors=exc.errors,
        )
    if isinstance(exc, JobConflict):
        return _refuse(exc.code, exc.detail, 409)
    if isinstance(exc, BulkPartlyQueued):
        from tide.jobs.api.serializers import JobSerializer

        request = context.get("request")
        response = _refuse(
            "broker_unavailable",
            f"The broker failed after {len(exc.queued)} jobs: those are queued (listed in "
            "`queued`), the others were not. Retry the request with the same "
            "Idempotency-Key to submit only the rest.",
            503,
            queued=[JobSerializer(job, context={"request": request}).data for job in exc.queued],
        )
        response["Retry-After"] = "5"
        return response
    if isinstance(exc, BrokerUnavailable):
        response = _refuse(
            "broker_unavailable",
            "The broker is unreachable; nothing was queued. Retry later.",
            503,
        )
        response["Retry-After"] = "5"
        return response
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    codes = exc.get_codes() if isinstance(exc, APIException) else None
    code = codes if isinstance(codes, str) else getattr(exc, "default_code", "invalid")
    detail = (
        response.data.get("detail", response.data)
        if isinstance(response.data, dict)
        else response.data
    )
    response.data = {"error": code, "detail": detail}
    # Every refusal is counted with its reason, not only the domain's own three: a client
    # sending bad fields or a stale token shows on the dashboard as what it is.
    JOBS_REJECTED.labels(code).inc()
    return response


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """Django's 404 for a path no route matches, in the API's error shape."""
    from django.http import JsonResponse

    JOBS_REJECTED.labels("not_found").inc()
    return JsonResponse({"error": "not_found", "detail": "No such URL."}, status=404)


def server_error(request: Any) -> Any:
    """Django's 500, in the API's error shape (a bug: the log has the traceback)."""
    from django.http import JsonResponse

    return JsonResponse(
        {"error": "server_error", "detail": "An internal error; it is logged."}, status=500
    )
