"""An operator restarted mid-scale (an upgrade, a rescheduled pod, a crash): the pool goes
on from where it was, never down, and reaches the size the load asks.

The operator runs on the API emulator (held to the real API's contract) with a fake
exporter reporting a backlog; the pool scales up one replica per 30 s (its own
``behavior``), so the restart lands mid-way. A restarted operator starts with no policy
state: it must seed itself from the Deployment's current size rather than from
``minReplicas`` (which would shrink the pool, and cut running work on scale-in).
"""

from __future__ import annotations

import pytest
from kube_emulator import TideEmulator
from pool_harness import (
    NS,
    FakeBusyProbe,
    FakeExporter,
    eventually,
    pool_body,
    replicas,
    running_operator,
)

from tide_operator.adapters.kube import KubeApi

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(120)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
MAX = 6


async def test_an_operator_restarted_mid_scale_goes_on_without_shrinking(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=500)
    await api.create(
        POOLS,
        pool_body(
            "grow",
            exporter_url=exporter.url,
            minReplicas=1,
            maxReplicas=MAX,
            pollingInterval=5,
            behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}},
        ),
    )
    seen: list[int] = []

    def size() -> int:
        value = replicas(emulator, "grow-workers") or 0
        seen.append(value)
        return value

    nodeid = request.node.nodeid
    async with running_operator(emulator, probe, scope="namespace", nodeid=nodeid):
        await eventually(lambda: size() >= 3, timeout=600, what="the pool half way up")
    mid = size()
    assert 3 <= mid < MAX
    seen.clear()

    # The new operator: no memory of the pool, the backlog still there.
    async with running_operator(emulator, probe, scope="namespace", nodeid=nodeid):
        await eventually(lambda: size() == MAX, timeout=600, what="the pool at its maximum")
    # Every size read after the restart (the test polls far more often than the pool's
    # 5 s ticks) was at least the size before it: the pool never went down.
    assert min(seen) >= mid, seen
    assert seen == sorted(seen)
