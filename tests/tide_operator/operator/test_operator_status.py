"""Status that tells the truth: what exists, not what the operator asked for.

The emulator runs no controllers, so each test writes the Deployment's status the way the
Deployment and ReplicaSet controllers of a real cluster do (through the ``status``
subresource, zero counts omitted, the ReplicaSet's ``FailedCreate`` copied onto the
Deployment as ``ReplicaFailure`` with the admission error as message), and checks what the
pool's status, its Events and the operator's metrics say about it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kube_emulator import WORKERPOOLS, TideEmulator
from pool_harness import (
    DEPLOYMENTS,
    NS,
    FakeExporter,
    condition,
    events,
    eventually,
    obj,
    pool_body,
    replicas,
)

from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import Runtime

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
NO_ACCOUNT = (
    'pods "mail-workers-7c9d6b5f4-" is forbidden: error looking up service account '
    'default/mail-sender: serviceaccount "mail-sender" not found'
)


def controller_status(
    deployment: dict[str, Any], *, existing: int, ready: int, failure: str | None
) -> dict[str, Any]:
    """A Deployment status as kube-controller-manager 1.26 writes it (zeros omitted)."""
    wanted = deployment["spec"]["replicas"]
    enough = ready >= wanted
    stamp = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"observedGeneration": deployment["metadata"]["generation"]}
    if existing:
        status["replicas"] = existing
        status["updatedReplicas"] = existing
    if ready:
        status["readyReplicas"] = ready
        status["availableReplicas"] = ready
    if wanted - ready > 0:
        status["unavailableReplicas"] = wanted - ready
    conditions = [
        {
            "type": "Available",
            "status": "True" if enough else "False",
            "reason": "MinimumReplicasAvailable" if enough else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if enough
            else "Deployment does not have minimum availability.",
            "lastUpdateTime": stamp,
            "lastTransitionTime": stamp,
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": "NewReplicaSetAvailable" if failure is None else "ReplicaSetUpdated",
            "message": f'ReplicaSet "{deployment["metadata"]["name"]}-7c9d6b5f4" is progressing.',
            "lastUpdateTime": stamp,
            "lastTransitionTime": stamp,
        },
    ]
    if failure is not None:
        conditions.append(
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": failure,
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
    status["conditions"] = conditions
    return {"status": status}


def gauge(runtime: Runtime, name: str, pool: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(name, {"namespace": NS, "workerpool": pool})


async def test_pods_that_cannot_be_created_are_reported_with_the_controllers_reason(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=2)
    await api.create(POOLS, pool_body("mail", exporter_url=exporter.url))
    await eventually(lambda: replicas(emulator, "mail-workers") == 2)
    deployment = obj(emulator, DEPLOYMENTS, "mail-workers")
    assert deployment is not None
    # The ReplicaSet controller cannot create a single pod: the service account is missing.
    await api.patch(
        f"{DEPLOYMENTS_PATH}/mail-workers/status",
        controller_status(deployment, existing=0, ready=0, failure=NO_ACCOUNT),
    )
    available = await eventually(
        lambda: (
            (c := condition(emulator, "mail", "WorkersAvailable"))
            and c["reason"] == "FailedCreate"
            and c
        )
    )
    assert available["status"] == "False"
    assert available["message"] == NO_ACCOUNT
    status = obj(emulator, WORKERPOOLS, "mail")["status"]  # type: ignore[index]
    # What exists, next to what is wanted: not the spec.replicas the operator wrote.
    assert (status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (0, 0, 2)
    assert events(emulator, "FailedCreate")[-1]["message"] == NO_ACCOUNT
    # The operator's metrics carry the same truth, so TideWorkerPoolBelowDesired can fire.
    assert gauge(operator, "tide_workerpool_current_replicas", "mail") == 0
    assert gauge(operator, "tide_workerpool_ready_replicas", "mail") == 0
    assert gauge(operator, "tide_workerpool_desired_replicas", "mail") == 2
    # The policy still moves from the size it set: no scale patch to "make it 2" again.
    scale_patches = [p for m, p in emulator.writes if p.endswith("mail-workers/scale")]
    loop = asyncio.get_running_loop()
    until = loop.time() + 30
    await eventually(lambda: loop.time() >= until)
    assert [p for m, p in emulator.writes if p.endswith("mail-workers/scale")] == scale_patches

    # Someone creates the service account; the controller catches up.
    deployment = obj(emulator, DEPLOYMENTS, "mail-workers")
    await api.patch(
        f"{DEPLOYMENTS_PATH}/mail-workers/status",
        controller_status(deployment, existing=2, ready=2, failure=None),  # type: ignore[arg-type]
    )
    recovered = await eventually(
        lambda: (
            (c := condition(emulator, "mail", "WorkersAvailable")) and c["status"] == "True" and c
        )
    )
    assert recovered["reason"] == "AllWorkersReady"
    status = obj(emulator, WORKERPOOLS, "mail")["status"]  # type: ignore[index]
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert gauge(operator, "tide_workerpool_current_replicas", "mail") == 2
    assert gauge(operator, "tide_workerpool_ready_replicas", "mail") == 2


async def test_pending_pods_exist_but_are_not_ready(
    operator: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=3)
    await api.create(POOLS, pool_body("batch", exporter_url=exporter.url))
    await eventually(lambda: replicas(emulator, "batch-workers") == 3)
    deployment = obj(emulator, DEPLOYMENTS, "batch-workers")
    # Pods created but unschedulable (no node fits): they exist, none is ready.
    await api.patch(
        f"{DEPLOYMENTS_PATH}/batch-workers/status",
        controller_status(deployment, existing=3, ready=1, failure=None),  # type: ignore[arg-type]
    )
    status = await eventually(
        lambda: (
            (found := (obj(emulator, WORKERPOOLS, "batch") or {}).get("status"))
            and found.get("readyReplicas") == 1
            and found
        )
    )
    available = condition(emulator, "batch", "WorkersAvailable")
    assert available is not None
    assert (available["status"], available["reason"]) == ("False", "WorkersNotReady")
    assert (status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (3, 1, 3)
    assert gauge(operator, "tide_workerpool_ready_replicas", "batch") == 1
    # Starting workers are no news: no Warning Event for them.
    assert events(emulator, "WorkersNotReady") == []
