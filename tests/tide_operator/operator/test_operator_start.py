"""The operator starts clean under the chart's RBAC, in either scope, or says why it cannot.

On a real cluster with the chart's namespace Role, kopf used to list namespaces and CRDs at
start, got 27 x 403 and served nothing for ~55 s. Here the emulator answers 403 for anything
the chart's rules do not grant to the operator's service account, exactly as RBAC does.
"""

from __future__ import annotations

import asyncio

import kopf
import pytest
from kube_emulator import OPERATOR_TOKEN, WORKERPOOLS, TideEmulator
from pool_harness import (
    DEPLOYMENTS,
    NS,
    FakeBusyProbe,
    FakeExporter,
    condition,
    eventually,
    pool_body,
    replicas,
    running_operator,
)

from tide_operator.adapters.credentials import Credentials
from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import CRD_MISSING, Runtime, build_registry
from tide_operator.edge.metrics import OperatorMetrics

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POLLING = 5.0  # the default pollingInterval


async def test_namespace_scope_starts_with_no_403_and_reconciles_within_one_interval(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=3)
    # The pool exists before the operator starts, as after an upgrade or a restart.
    await api.create(
        f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools",
        pool_body("early", exporter_url=exporter.url),
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running_operator(emulator, probe, scope="namespace", nodeid=request.node.nodeid):
        await eventually(lambda: replicas(emulator, "early-workers") == 3, timeout=POLLING)
        reconciled = loop.time() - started
        await eventually(lambda: condition(emulator, "early", "Ready"))
    assert reconciled <= POLLING
    assert emulator.operator_requests(), "the operator's requests are logged as its own"
    assert [e for e in emulator.operator_requests() if e.refused] == []
    assert emulator.forbidden == []


async def test_cluster_scope_serves_every_namespace_with_the_cluster_role(
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> None:
    exporter.set("default", waiting=2)
    async with running_operator(emulator, probe, scope="cluster", nodeid=request.node.nodeid):
        for namespace in (NS, "team-b"):
            body = pool_body("wide", exporter_url=exporter.url)
            body["metadata"]["namespace"] = namespace
            await api.create(f"/apis/tide.dev/v1alpha1/namespaces/{namespace}/workerpools", body)

        def scaled(namespace: str) -> bool:
            try:
                found = emulator.objects[DEPLOYMENTS, namespace, "wide-workers"]
            except KeyError:
                return False
            return bool(found.raw["spec"].get("replicas") == 2)

        await eventually(lambda: scaled(NS) and scaled("team-b"))
    assert emulator.forbidden == []


# On a failed start kopf arms a last-resort SIGKILL for 10 minutes later; under looptime's
# fake clock that is at once, and it would kill the test runner. The start fails in
# milliseconds of real time, so this test runs on the real clock.
@pytest.mark.looptime(False)
async def test_a_cluster_without_the_crd_stops_the_operator_with_a_clear_message(
    emulator: TideEmulator,
) -> None:
    del emulator.resources[WORKERPOOLS]
    url = str(emulator.url)
    runtime = Runtime(
        metrics=OperatorMetrics(),
        login=lambda: Credentials(url, authorization=f"Bearer {OPERATOR_TOKEN}"),
    )
    with pytest.raises(Exception) as failure:  # noqa: PT011 - kopf wraps it as it likes
        await asyncio.wait_for(
            kopf.operator(
                registry=build_registry(runtime),
                settings=runtime.settings,
                standalone=True,
                namespaces=[NS],
            ),
            timeout=30,
        )
    assert CRD_MISSING in f"{failure.value!r} {failure.value.__cause__!r}"
    assert not [o for o in emulator.objects.values() if o.raw.get("kind") == "Deployment"]
