"""The platform alone, beside a team's own app (ci/platform-only-values.yaml): the operator,
the exporter, Flower and the dashboards for the app's broker, with Tide's API, beat,
migrations and databases off. Exactly those objects render; nothing of Tide points at a
database; every process that talks to the app's broker carries its transport options;
and the team's pool carries nothing of Tide's configuration."""

from __future__ import annotations

import json

import pytest
from chart_render import CHART, Render, helm, pod_specs, template

SCENARIO = "platform-only"

#: The whole install: what a platform team gets, and nothing of Tide's reference app.
PLATFORM_OBJECTS = {
    ("ClusterRole", "workerpools.tide.dev-admin"),
    ("ClusterRole", "workerpools.tide.dev-edit"),
    ("ClusterRole", "workerpools.tide.dev-view"),
    ("ConfigMap", "tide"),
    ("ConfigMap", "tide-dashboard-autoscaler"),
    ("ConfigMap", "tide-dashboard-overview"),
    ("CustomResourceDefinition", "workerpools.tide.dev"),
    ("Deployment", "tide-exporter"),
    ("Deployment", "tide-flower"),
    ("Deployment", "tide-operator"),
    ("NetworkPolicy", "tide-exporter"),
    ("NetworkPolicy", "tide-flower"),
    ("NetworkPolicy", "tide-operator"),
    ("NetworkPolicy", "tide-worker"),
    ("PrometheusRule", "tide"),
    ("Role", "tide-operator"),
    ("RoleBinding", "tide-operator"),
    ("Secret", "tide"),
    ("Service", "tide-exporter"),
    ("Service", "tide-flower"),
    ("Service", "tide-operator"),
    ("ServiceAccount", "tide"),
    ("ServiceAccount", "tide-operator"),
    ("ServiceMonitor", "tide-exporter"),
    ("ServiceMonitor", "tide-flower"),
    ("ServiceMonitor", "tide-operator"),
    ("Role", "tide-operator-lease"),
    ("RoleBinding", "tide-operator-lease"),
    ("PodDisruptionBudget", "tide-operator"),
    ("WorkerPool", "tide-orders"),
    ("WorkerPool", "tide-reports"),
}


@pytest.fixture
def render(rendered: dict[str, Render]) -> Render:
    return rendered[SCENARIO]


def test_exactly_the_platform_objects(render: Render) -> None:
    assert {(o["kind"], o["metadata"]["name"]) for o in render.objects} == PLATFORM_OBJECTS


def test_nothing_points_at_a_database(render: Render) -> None:
    for obj in render.objects:
        for spec in pod_specs(obj):
            for container in spec.get("initContainers", []) + spec["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                assert not names & {"DATABASE_URL", "TIDE_POSTGRES_PASSWORD"}, obj["metadata"]
    secret = render.get("Secret", "tide")
    assert "postgres-password" not in secret["data"]


def test_broker_clients_use_the_apps_transport_options(render: Render) -> None:
    for name in ("tide-exporter", "tide-operator", "tide-flower"):
        container = render.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert json.loads(env["TIDE_BROKER_TRANSPORT_OPTIONS"]["value"]) == {
            "global_keyprefix": "stockapp:"
        }, name
        assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "stockapp-broker",
            "key": "CELERY_BROKER_URL",
        }


def test_the_teams_pool_carries_its_own_pod_and_nothing_of_tides(render: Render) -> None:
    pool = render.get("WorkerPool", "tide-orders")["spec"]
    assert pool["template"]["image"] == "registry.example.com/stockapp:1.4.2"
    assert pool["template"]["app"] == "stockapp"
    # Tide's settings module (in Tide's ConfigMap) or secret key would break a team's pod.
    assert pool["template"]["envFrom"] == [{"secretRef": {"name": "stockapp-env"}}]
    assert "env" not in pool["template"]
    assert "serviceAccountName" not in pool["template"]
    # The release's labels, so the NetworkPolicy for workers selects its pods.
    assert pool["template"]["labels"]["app.kubernetes.io/instance"] == "tide"
    adopted = render.get("WorkerPool", "tide-reports")["spec"]
    assert adopted["scaleTargetRef"] == {"name": "stockapp-reports"}
    assert "template" not in adopted


def test_a_database_without_any_user_is_refused() -> None:
    result = helm(
        "template", "tide", str(CHART), "--values", str(CHART / "ci" / f"{SCENARIO}-values.yaml"),
        "--set", "postgresql.enabled=true",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "nothing of this install uses a database" in result.stderr


def test_the_api_alone_off_keeps_the_database_for_beat_and_migrations() -> None:
    objects = template("--set", "api.enabled=false")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "tide-api") not in kinds
    assert ("Service", "tide-api") not in kinds
    assert ("Deployment", "tide-beat") in kinds
    beat = next(
        o for o in objects if (o["kind"], o["metadata"]["name"]) == ("Deployment", "tide-beat")
    )
    env = {e["name"] for e in beat["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "DATABASE_URL" in env
    # helm test checks the API's /readyz: no API, no test pod.
    assert not [o for o in objects if o["kind"] == "Pod"]
