"""Probes and metrics for the API process.

``/healthz`` says only that the process answers (a liveness probe must not fail because
a dependency is down, or Kubernetes restarts healthy pods in a loop). ``/readyz`` checks
the database and the broker and names the part that fails, so a readiness probe takes the
pod out of the Service while it cannot do its job.
"""

from __future__ import annotations

import time

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from tide.celery import app
from tide.health.metrics import exposition


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, dict[str, object]] = {}
    for name, check in (("database", _check_database), ("broker", _check_broker)):
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # any failure means not ready; say which and why
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            checks[name] = {"ok": True, "seconds": round(time.perf_counter() - started, 4)}
    ready = all(c["ok"] for c in checks.values())
    failing = [name for name, c in checks.items() if not c["ok"]]
    body = {"status": "ready" if ready else "unavailable", "failing": failing, "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    payload, content_type = exposition()
    return HttpResponse(payload, content_type=content_type)
