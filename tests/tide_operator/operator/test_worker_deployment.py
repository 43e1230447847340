"""The pure builders: the worker Deployment and the pod-deletion-cost plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tide_operator.resources.deployments import (
    UNKNOWN_BUSY_COST,
    PodLoad,
    build_worker_deployment,
    plan_deletion_costs,
    template_hash,
)
from tide_operator.resources.spec import WorkerPool

ROOT = Path(__file__).resolve().parents[3]


def pool(**spec: Any) -> WorkerPool:
    body: dict[str, Any] = {
        "queues": ["a", "b"],
        "concurrency": 3,
        "template": {"image": "tide:1", "env": [{"name": "X", "value": "1"}]},
        "metrics": {"exporter": {"url": "http://e:9808"}},
        "shutdown": {"gracePeriodSeconds": 900},
    }
    body.update(spec)
    return WorkerPool.from_body(
        {"metadata": {"name": "p", "namespace": "n", "uid": "u-1"}, "spec": body}
    )


def test_deployment_runs_the_pools_worker_command() -> None:
    d = build_worker_deployment(pool())
    pod = d["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:7] == ["worker", "-Q", "a,b", "-c", "3", "-n", "worker@%h"]
    assert "--prefetch-multiplier=1" in container["args"]
    assert pod["terminationGracePeriodSeconds"] == 900
    assert {"name": "X", "value": "1"} in container["env"]
    assert "replicas" not in d["spec"]  # the scaler owns replicas
    assert d["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert (
        d["spec"]["selector"]["matchLabels"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    )
    probe = container["livenessProbe"]
    # A busy worker still answers ping; a restart must need minutes of silence.
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 300


def test_template_hash_changes_only_with_the_template() -> None:
    base = template_hash(pool())
    assert template_hash(pool(maxReplicas=7)) == base  # scaling fields do not roll pods
    assert template_hash(pool(concurrency=4)) != base
    assert template_hash(pool(template={"image": "tide:2"})) != base


def test_adopted_pool_has_nothing_to_build() -> None:
    with pytest.raises(ValueError, match="adopts"):
        build_worker_deployment(pool(template=None, scaleTargetRef={"name": "d"}))


PLANS = [
    # Idle pods keep the implicit cost 0 (no write); busy pods rank by what they hold.
    ([PodLoad("a", 0), PodLoad("b", 2), PodLoad("c", 0)], {"b": 2}, 2),
    # A pod that did not answer ranks after every known one.
    ([PodLoad("a", None), PodLoad("b", 0)], {"a": UNKNOWN_BUSY_COST}, 1),
    # Costs already right cost no writes.
    ([PodLoad("a", 1, current_cost=1), PodLoad("b", 0, current_cost=0)], {}, 1),
    # A formerly busy pod that went idle is lowered back to 0.
    ([PodLoad("a", 0, current_cost=5)], {"a": 0}, 1),
]


@pytest.mark.parametrize(("loads", "costs", "idle"), PLANS)
def test_deletion_plan(loads: list[PodLoad], costs: dict[str, int], idle: int) -> None:
    plan = plan_deletion_costs(loads, remove=1)
    assert dict(plan.costs) == costs
    assert plan.idle == idle


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
