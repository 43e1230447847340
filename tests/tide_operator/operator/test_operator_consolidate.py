"""``shutdown.consolidate`` through the Deployment target, on the API emulator (held to the
OpenAPI document and the chart's RBAC) with the operator's real Celery probe and real
``celery -A stockapp worker`` processes named as the pods: a busy worker chosen for
scale-in is cordoned (stops consuming, annotated, never the ReplicaSet's pick), and once it
finished its task it is the pod the ReplicaSet removes.
"""

from __future__ import annotations

import pytest
from kube_emulator import TideEmulator
from pool_harness import DEPLOYMENTS, NS, PODS, deployment_body, eventually, obj, pod_body
from stockapp_harness import StockBroker, Workers, load_app

from tide_operator.adapters.kube import KubeApi
from tide_operator.adapters.targets import CeleryInspectProbe, DeploymentTarget
from tide_operator.resources.deployments import CORDONED_ANNOTATION, DELETION_COST_ANNOTATION

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

LABELS = {"app": "stockapp-orders"}
HOLD = "stockapp.tasks.hold"


def annotations(emulator: TideEmulator, pod: str) -> dict[str, str]:
    found = obj(emulator, PODS, pod) or {}
    return dict(found.get("metadata", {}).get("annotations") or {})


async def test_a_busy_worker_is_cordoned_then_removed_once_idle(
    emulator: TideEmulator,
    api: KubeApi,
    broker: StockBroker,
    workers: Workers,
    real_probe: CeleryInspectProbe,
) -> None:
    pods = ["stock-a", "stock-b"]
    await api.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        deployment_body("stockapp-orders", replicas=2, labels=LABELS),
    )
    for name in pods:
        await api.create(f"/api/v1/namespaces/{NS}/pods", pod_body(name, labels=LABELS))
        workers.start(
            broker,
            queues=["orders"],
            concurrency=1,
            name=f"worker@{name}",
            extra=["--prefetch-multiplier", "1"],
        )
    nodes = [f"worker@{n}" for n in pods]

    async def all_answer() -> bool:
        found = await real_probe.busy(nodes)
        return all(found[n] is not None for n in nodes)

    await eventually(all_answer, timeout=60, what="both stock workers to answer")
    app = load_app(broker.env())
    for _ in pods:
        app.tasks[HOLD].apply_async(args=[broker.run], queue="orders")
    await eventually(lambda: broker.running() == 2, timeout=30, what="a task on each worker")

    target = DeploymentTarget(
        api, namespace=NS, name="stockapp-orders", busy_probe=real_probe, adopted=True
    )
    assert target.can_consolidate
    current = await target.current()
    assert await target.cordoned() == 0
    # One consuming worker is enough, but both hold a task: one is cordoned, not removed.
    replicas = await target.consolidate(1, current=current, queues=["orders"], reason="test")
    assert replicas == 2
    cordoned = [p for p in pods if CORDONED_ANNOTATION in annotations(emulator, p)]
    assert len(cordoned) == 1
    (gone,) = cordoned
    (kept,) = [p for p in pods if p != gone]
    assert annotations(emulator, gone)[DELETION_COST_ANNOTATION] == "1000000"

    # Both tasks end; a new one can only go to the consuming worker.
    broker.release(2)
    await eventually(lambda: broker.done() == 2, timeout=30, what="both tasks done")
    app.tasks[HOLD].apply_async(args=[broker.run], queue="orders")
    await eventually(lambda: broker.running() == 1, timeout=30, what="the third task running")
    held = await real_probe.busy(nodes)
    assert held == {f"worker@{gone}": 0, f"worker@{kept}": 1}

    # Next step: the cordoned worker is idle, so it is the one the ReplicaSet takes.
    current = await target.current()
    assert await target.cordoned() == 1
    replicas = await target.consolidate(1, current=current, queues=["orders"], reason="test")
    assert replicas == 1
    found = obj(emulator, DEPLOYMENTS, "stockapp-orders") or {}
    assert found["spec"]["replicas"] == 1
    assert annotations(emulator, gone)[DELETION_COST_ANNOTATION] == "-1"
    assert int(annotations(emulator, kept).get(DELETION_COST_ANNOTATION, "0")) > -1
    broker.release(1)
    await eventually(lambda: broker.done() == 3, timeout=30, what="the third task done")
