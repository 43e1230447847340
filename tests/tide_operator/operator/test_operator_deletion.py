"""Deleting a pool never waits for the operator: no finalizer, and the loop stops at once.

Earlier versions ran each pool as a kopf daemon, which put the ``tide.dev/operator``
finalizer on every pool: ``kubectl delete wp`` and namespace deletion hung while the operator
was away. Nothing needs a finalizer (the owned Deployment goes with its pool through its
owner reference), so pools carry none, and the operator removes the old one from pools an
earlier version marked.
"""

from __future__ import annotations

import asyncio

import pytest
from kube_emulator import WORKERPOOLS, TideEmulator
from pool_harness import (
    DEPLOYMENTS,
    NS,
    FakeBusyProbe,
    FakeExporter,
    condition,
    eventually,
    obj,
    pool_body,
    replicas,
    running_operator,
)

from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import LEGACY_FINALIZER

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"


async def test_a_pool_is_deleted_while_no_operator_runs(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=2)
    await api.create(POOLS, pool_body("away", exporter_url=exporter.url))
    async with running_operator(emulator, probe, scope="namespace", nodeid=request.node.nodeid):
        await eventually(lambda: replicas(emulator, "away-workers") == 2)
        await eventually(lambda: condition(emulator, "away", "Ready"))
    pool = obj(emulator, WORKERPOOLS, "away")
    assert pool is not None
    assert not pool["metadata"].get("finalizers")

    # The operator is gone (uninstalled, crash-looping): the deletion completes at once.
    await api._send("DELETE", f"{POOLS}/away")
    assert obj(emulator, WORKERPOOLS, "away") is None
    assert obj(emulator, DEPLOYMENTS, "away-workers") is None  # garbage-collected


async def test_the_operator_releases_pools_an_earlier_version_held(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=1)
    old = pool_body("old", exporter_url=exporter.url)
    old["metadata"]["finalizers"] = [LEGACY_FINALIZER]
    await api.create(POOLS, old)
    async with running_operator(emulator, probe, scope="namespace", nodeid=request.node.nodeid):
        await eventually(
            lambda: not (obj(emulator, WORKERPOOLS, "old") or {})["metadata"].get("finalizers")
        )
        await eventually(lambda: replicas(emulator, "old-workers") == 1)
    await api._send("DELETE", f"{POOLS}/old")
    assert obj(emulator, WORKERPOOLS, "old") is None


async def test_a_pool_being_deleted_stops_its_loop_and_recreates_nothing(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    # Another controller's finalizer (or a foreground deletion) keeps the pool, marked for
    # deletion, while the garbage collector removes its Deployment.
    exporter.set("default", waiting=2)
    held = pool_body("held", exporter_url=exporter.url)
    held["metadata"]["finalizers"] = ["example.com/hold"]
    await api.create(POOLS, held)
    async with running_operator(
        emulator, probe, scope="namespace", nodeid=request.node.nodeid
    ) as runtime:
        await eventually(lambda: replicas(emulator, "held-workers") == 2)
        assert runtime.loops is not None
        await api._send("DELETE", f"{POOLS}/held")
        loops = runtime.loops
        await eventually(lambda: (NS, "held") not in loops)
        await api._send("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/held-workers")
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * 5.0  # three polling intervals
        await eventually(lambda: loop.time() >= until)
        assert obj(emulator, DEPLOYMENTS, "held-workers") is None
        assert (
            runtime.metrics.registry.get_sample_value(
                "tide_workerpool_desired_replicas", {"namespace": NS, "workerpool": "held"}
            )
            is None
        )
    pool = obj(emulator, WORKERPOOLS, "held")
    assert pool is not None
    assert pool["metadata"]["finalizers"] == ["example.com/hold"]  # not ours to remove
