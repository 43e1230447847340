"""Every rendered object against the Kubernetes schemas of each supported version.

kubernetes-validate ships the OpenAPI schemas of Kubernetes releases offline; strict mode
also refuses unknown fields, which catches a mistyped key that the API server would drop
silently. Custom resources (WorkerPool, the Prometheus Operator's kinds) are checked
elsewhere: WorkerPools by the operator's own model, rules by promtool.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
from chart_render import SCENARIOS, Render, worker_deployments
from kubernetes_validate.utils import all_versions, latest_version

CUSTOM_KINDS = {"WorkerPool", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


def supported_versions() -> list[str]:
    """1.30 (the chart's kubeVersion floor) up to the newest the package ships."""
    versions = sorted(
        {v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)},
        key=lambda v: tuple(map(int, v.split("."))),
    )
    assert latest_version() in versions
    return versions


VERSIONS = supported_versions()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_objects_valid_for_every_supported_kubernetes(
    rendered: dict[str, Render], scenario: str
) -> None:
    render = rendered[scenario]
    objects = [o for o in render.objects if o["kind"] not in CUSTOM_KINDS]
    objects += worker_deployments(render)
    errors = []
    for version in VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {error}")
    assert errors == []


def test_versions_cover_130_to_newest() -> None:
    assert VERSIONS[0].startswith("1.30")
    assert VERSIONS[-1] == latest_version()
