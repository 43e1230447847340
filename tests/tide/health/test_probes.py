"""Probes and metrics of the API process."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db


def test_healthz_needs_nothing() -> None:
    response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_database_and_broker() -> None:
    body = Client().get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"]


def test_readyz_names_the_failing_part(broker_down: Any) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert "Error" in body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"]


def test_metrics_count_requests_and_jobs() -> None:
    client = Client()
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    requests = families["tide_http_requests"]
    assert any(s.labels.get("route") == "healthz" and s.value >= 1 for s in requests.samples)
    states = {s.labels["state"] for s in families["tide_jobs"].samples}
    assert {"pending", "succeeded", "failed", "revoked"} <= states


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_a_pod_ip_host(path: str) -> None:
    # Kubelet and Prometheus send Host: <pod IP>, which ALLOWED_HOSTS cannot list.
    assert Client().get(path, HTTP_HOST="10.1.2.3:8000").status_code == 200


def test_other_paths_still_check_the_host() -> None:
    assert Client().get("/api/tasks/", HTTP_HOST="10.1.2.3:8000").status_code == 400


def rejected(client: Client) -> dict[str, float]:
    text = client.get("/metrics").content.decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tide_jobs_rejected"
        for sample in family.samples
        if sample.name == "tide_jobs_rejected_total"
    }


@pytest.mark.django_db(transaction=True)
def test_every_refusal_is_counted_with_its_reason() -> None:
    from rest_framework.test import APIClient

    from tide.jobs.accounts import ensure_token

    client = APIClient()
    before = rejected(Client())
    # No token, then a wrong one.
    client.post("/api/jobs/", {"task": "tide.samples.add"}, format="json")
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    client.get("/api/jobs/")
    client.credentials(HTTP_AUTHORIZATION=f"Token {ensure_token('counted')}")
    cases = {
        # A field the serializer refuses.
        "invalid": lambda: client.post(
            "/api/jobs/", {"task": "tide.samples.add", "priority": 99}, format="json"
        ),
        "parse_error": lambda: client.post(
            "/api/jobs/", data="{nope", content_type="application/json"
        ),
        "unknown_task": lambda: client.post("/api/jobs/", {"task": "no.such"}, format="json"),
        "invalid_cursor": lambda: client.get("/api/jobs/", {"cursor": "//4="}),
        "not_found": lambda: client.get("/api/jobs/00000000-0000-0000-0000-000000000000/"),
        # Refused by the middleware before any view runs.
        "payload_too_large": lambda: client.post(
            "/api/jobs/", {"task": "tide.samples.total", "args": [[1.0] * 100_000]}, format="json"
        ),
    }
    for reason, send in cases.items():
        assert send().status_code >= 400, reason
    after = rejected(Client())
    for reason in [*cases, "not_authenticated", "authentication_failed"]:
        assert after.get(reason, 0) - before.get(reason, 0) == 1, reason
