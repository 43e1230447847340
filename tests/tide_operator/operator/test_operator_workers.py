"""SafeScaleIn from what real workers run: the operator (kopf, the API emulator) with the
real Celery probe, against real ``celery -A stockapp worker`` processes named as the pods
of an adopted Deployment. Real time, not ``looptime``: the probe waits on real replies.

The stock app keeps Celery's defaults (early acks, prefetch 4), and the pool declares the
safe settings (``worker.acksLate: true`` by default): only asking the workers can tell.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from kube_emulator import WORKERPOOLS, TideEmulator
from pool_harness import (
    NS,
    FakeExporter,
    condition,
    deployment_body,
    eventually,
    obj,
    pod_body,
    pool_body,
    running_operator,
)
from stockapp_harness import StockBroker, Workers

from tide_operator.adapters.kube import KubeApi
from tide_operator.adapters.targets import CeleryInspectProbe
from tide_operator.edge.handlers import Runtime

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
LABELS = {"app": "stockapp-orders"}


@pytest_asyncio.fixture()
async def operator(
    emulator: TideEmulator, real_probe: CeleryInspectProbe, request: pytest.FixtureRequest
) -> AsyncIterator[Runtime]:
    async with running_operator(
        emulator, real_probe, scope="namespace", nodeid=request.node.nodeid, worker_probe=real_probe
    ) as runtime:
        yield runtime


async def adopt(api: KubeApi, exporter: FakeExporter, pods: list[str]) -> None:
    """The team's Deployment (600 s grace, -n worker@%h), its ready pods, and a pool on it."""
    deployment = deployment_body("stockapp-orders", replicas=len(pods), labels=LABELS)
    pod_spec = deployment["spec"]["template"]["spec"]
    pod_spec["terminationGracePeriodSeconds"] = 600
    pod_spec["containers"][0]["args"] = [
        "celery", "-A", "stockapp", "worker", "-Q", "orders", "-n", "worker@%h",
    ]  # fmt: skip
    await api.create(DEPLOYMENTS_PATH, deployment)
    for name in pods:
        pod = pod_body(name, labels=LABELS)
        await api.create(PODS_PATH, pod)
        # The kubelet's report: the pod is up (only ready pods are asked).
        await api.patch(
            f"{PODS_PATH}/{name}/status",
            {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
        )
    exporter.set("orders", waiting=0)
    await api.create(
        POOLS,
        pool_body(
            "orders",
            exporter_url=exporter.url,
            queues=["orders"],
            concurrency=2,
            scaleTargetRef={"name": "stockapp-orders"},
            minReplicas=len(pods),
            pollingInterval=1,
            staleAfterSeconds=5,
            shutdown={"gracePeriodSeconds": 600},
        ),
    )


async def answers(probe: CeleryInspectProbe, node: str) -> bool:
    return (await probe.busy([node])).get(node) is not None


def workers_status(emulator: TideEmulator) -> dict[str, Any] | None:
    found = obj(emulator, WORKERPOOLS, "orders")
    return ((found or {}).get("status") or {}).get("workers")


async def test_early_acks_and_prefetch_are_found_in_a_stock_worker(
    operator: Runtime,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    broker: StockBroker,
    workers: Workers,
    real_probe: CeleryInspectProbe,
) -> None:
    worker = workers.start(
        broker, queues=["orders"], concurrency=2, integration=False, name="worker@stock-a"
    )
    await eventually(
        lambda: answers(real_probe, "worker@stock-a"), timeout=60, what=f"{worker.tail()}"
    )
    await adopt(api, exporter, ["stock-a"])

    seen = await eventually(lambda: workers_status(emulator), timeout=60, what="status.workers")
    assert seen == {
        "answered": 1,
        "acksLate": False,
        "prefetchMultiplier": 4,
        "concurrency": 2,
        "integration": False,
    }
    safe = condition(emulator, "orders", "SafeScaleIn")
    assert safe is not None
    assert safe["status"] == "False"
    assert safe["reason"] == "UnsafeConfiguration"
    assert "1 of 1 workers run early acks (task_acks_late is false)" in safe["message"]
    assert "workers prefetch 4 tasks per slot" in safe["message"]
    # The pool declared the safe settings; the workers' answer is what counts.
    assert "worker.acksLate" not in safe["message"]


async def test_the_integration_makes_early_acks_safe(
    operator: Runtime,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    broker: StockBroker,
    workers: Workers,
    real_probe: CeleryInspectProbe,
) -> None:
    workers.start(broker, queues=["orders"], concurrency=2, integration=True, name="worker@stock-b")
    await eventually(lambda: answers(real_probe, "worker@stock-b"), timeout=60, what="worker")
    await adopt(api, exporter, ["stock-b"])

    seen = await eventually(
        lambda: (s := workers_status(emulator)) and s["integration"] and s,
        timeout=60,
        what="the integration seen",
    )
    assert seen["acksLate"] is False
    safe = condition(emulator, "orders", "SafeScaleIn")
    assert safe is not None
    # Running tasks are counted: early acks alone no longer make scale-in unsafe; the
    # prefetch still does.
    assert "early acks" not in safe["message"]
    assert "prefetch 4" in safe["message"]


async def test_workers_under_other_names_are_reported(
    operator: Runtime,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    broker: StockBroker,
    workers: Workers,
) -> None:
    # The pod runs a worker, but as celery@<host>: the operator cannot address it.
    workers.start(broker, queues=["orders"], integration=False, name="celery@stock-c")
    await adopt(api, exporter, ["stock-c"])
    safe = await eventually(
        lambda: (
            (c := condition(emulator, "orders", "SafeScaleIn"))
            and "no worker answered" in c["message"]
            and c
        ),
        timeout=60,
    )
    assert "(1 asked)" in safe["message"]
