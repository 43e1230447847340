"""A standby replica keeps its pools' policy memory warm, counting only scale-ups it saw.

A replica that does not hold the Lease runs each pool's decision on what the watches show,
so that at a takeover it respects the step limits the acting replica used. Its own
decisions are never carried out: when no replica acts (the holder just died, or this one
lost the Lease during an API outage), counting them as made held back the first real
scale-up after the takeover by up to a policy period (the chaos bench, docs/faults.md:
4 s of a 10 s period after a SIGKILL, 8 s after an API outage). The scale events a standby
keeps are the moves of the Deployment's size it saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tide_operator.adapters.credentials import Credentials
from tide_operator.core.policy import Observation
from tide_operator.edge.handlers import Runtime, _Pool, _shadow
from tide_operator.edge.metrics import OperatorMetrics
from tide_operator.resources.spec import WorkerPool

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]

NS = "default"
POOL: dict[str, Any] = {
    "apiVersion": "tide.dev/v1alpha1",
    "kind": "WorkerPool",
    "metadata": {"name": "warm", "namespace": NS, "uid": "u-pool", "generation": 1},
    "spec": {
        "queues": ["default"],
        "concurrency": 4,
        "minReplicas": 1,
        "maxReplicas": 10,
        "pollingInterval": 2,
        "template": {"image": "tide:test"},
        "metrics": {"exporter": {"url": "http://exporter:9808/metrics"}},
        # One worker more per 10 s at most: the limit a phantom scale-up would use up.
        "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]}},
    },
}


class Backlog:
    """Always 100 waiting: every decision asks for more workers."""

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        return Observation(at=now, waiting=100, inflight=8)


def deployment(replicas: int, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "warm-workers",
            "namespace": NS,
            "uid": "u-deploy",
            "resourceVersion": str(version),
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": replicas},
    }


async def test_a_standby_counts_only_the_scale_ups_it_saw() -> None:
    runtime = Runtime(metrics=OperatorMetrics(), login=lambda: Credentials("http://unused"))
    index: dict[Any, list[dict[str, Any]]] = {(NS, "warm-workers"): [deployment(2, 1)]}
    runtime.workloads.bind(deployments=index, pods={})
    memory = _Pool(source=Backlog(), source_spec=WorkerPool.from_body(POOL).spec.metrics)

    async def tick() -> None:
        await _shadow(runtime, memory, POOL)
        memory.standing_by = True  # as the pool's loop marks a standby's tick
        await asyncio.sleep(2)

    # Nobody acts: the Deployment stays at 2 however much the backlog asks.
    for _ in range(8):
        await tick()
    assert memory.state.scale_events == ()

    # The acting replica scales to 3: the standby counts that move, once.
    index[NS, "warm-workers"] = [deployment(3, 2)]
    for _ in range(3):
        await tick()
    assert [change for _, change in memory.state.scale_events] == [1]
