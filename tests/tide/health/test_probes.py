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
