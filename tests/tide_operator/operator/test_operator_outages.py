"""Quiet under outages: what the operator writes and logs while its peers are down.

An outage is when an operator's costs matter most: the API server is restarting or under
load, the metrics backend is gone, and every pool fails at once. These tests run the
operator through ``ApiGateway`` (which refuses connections and answers 403 on demand, as
a restarting kube-apiserver does) and assert on state: the emulator's write log, the
operator's own counters, and log records counted by logger, level and pool — not on text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from api_gateway import ApiGateway
from kube_emulator import OPERATOR_TOKEN, TideEmulator
from pool_harness import (
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
from tide_operator.edge.handlers import API_ERROR_GRACE, Runtime

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
HANDLERS = "tide_operator.edge.handlers"
TOKEN = "operator-token"


@pytest_asyncio.fixture()
async def gateway(emulator: TideEmulator) -> AsyncIterator[ApiGateway]:
    async with ApiGateway(
        str(emulator.url), tokens={TOKEN}, upstream_authorization=f"Bearer {OPERATOR_TOKEN}"
    ) as front:
        yield front


@pytest_asyncio.fixture()
async def runtime(
    gateway: ApiGateway,
    emulator: TideEmulator,
    probe: FakeBusyProbe,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Runtime]:
    """The operator as the chart runs it, reaching the API only through the gateway."""
    async with running_operator(
        emulator,
        probe,
        scope="namespace",
        nodeid=request.node.nodeid,
        login=lambda: Credentials(gateway.url, authorization=f"Bearer {TOKEN}"),
    ) as operator:
        yield operator


async def wait(seconds: float) -> None:
    """Let ``seconds`` of loop time pass (looptime makes it instant)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    await eventually(lambda: loop.time() >= until, timeout=seconds + 5)


def status_writes(emulator: TideEmulator, since: int = 0) -> list[str]:
    return [path for method, path in emulator.writes[since:] if path.endswith("/status")]


async def test_metrics_outage_writes_status_once_not_every_tick(
    runtime: Runtime, emulator: TideEmulator, exporter: FakeExporter, api: KubeApi
) -> None:
    exporter.set("default", waiting=2)
    # One pool that holds through the outage, one that goes to its fallback size.
    await api.create(POOLS, pool_body("hold", exporter_url=exporter.url))
    await api.create(
        POOLS,
        pool_body(
            "fall", exporter_url=exporter.url, fallback={"failureThreshold": 3, "replicas": 4}
        ),
    )
    for name in ("hold", "fall"):
        await eventually(lambda name=name: replicas(emulator, f"{name}-workers") == 2)
        await eventually(
            lambda name=name: (c := condition(emulator, name, "Ready")) and c["status"] == "True"
        )

    exporter.down = True
    for name in ("hold", "fall"):
        await eventually(
            lambda name=name: (
                (c := condition(emulator, name, "MetricsAvailable"))
                and c["reason"] == "MetricsUnavailable"
            )
        )
    await eventually(lambda: replicas(emulator, "fall-workers") == 4)
    await eventually(
        lambda: (c := condition(emulator, "fall", "Fallback")) and c["status"] == "True"
    )
    errors_before = [
        runtime.metrics.registry.get_sample_value(
            "tide_workerpool_metric_errors_total", {"namespace": NS, "workerpool": name}
        )
        or 0.0
        for name in ("hold", "fall")
    ]
    writes_before = len(emulator.writes)
    # Twelve more ticks of each pool (pollingInterval 5 s) with the metrics still down.
    await wait(60)
    assert status_writes(emulator, writes_before) == []
    assert emulator.writes[writes_before:] == []
    # The count went on, in the operator's memory and metrics instead of the status text.
    for name, before in zip(("hold", "fall"), errors_before, strict=True):
        after = runtime.metrics.registry.get_sample_value(
            "tide_workerpool_metric_errors_total", {"namespace": NS, "workerpool": name}
        )
        assert after is not None
        assert after - before >= 10, name


async def test_api_outage_is_one_warning_and_one_recovery_line_per_pool(
    runtime: Runtime,
    gateway: ApiGateway,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    exporter.set("default", waiting=2)
    names = ["a", "b", "c"]
    for name in names:
        await api.create(POOLS, pool_body(name, exporter_url=exporter.url))
    for name in names:
        await eventually(
            lambda name=name: (c := condition(emulator, name, "Ready")) and c["status"] == "True"
        )
    caplog.clear()

    # The API server goes away (connections refused) for a minute: twelve ticks per pool,
    # each of which must scale (at steady state a tick makes no request: watches).
    await gateway.refuse()
    exporter.set("default", waiting=3)
    await wait(60)
    failures = runtime.metrics.registry.get_sample_value(
        "tide_operator_api_failures_total", {"cause": "unreachable"}
    )
    assert failures is not None
    assert failures >= 10 * len(names)
    await gateway.accept()
    # Work resumes: the change in the queues reaches every pool's Deployment.
    for name in names:
        await eventually(lambda name=name: replicas(emulator, f"{name}-workers") == 3)

    def pool_records(level: int, function: str) -> dict[str, int]:
        counts = dict.fromkeys(names, 0)
        for record in caplog.records:
            if record.name == HANDLERS and record.levelno == level and record.funcName == function:
                assert isinstance(record.args, tuple)
                namespace, name = record.args[:2]
                if namespace == NS and name in counts:
                    counts[str(name)] += 1
        return counts

    assert pool_records(logging.WARNING, "trouble") == dict.fromkeys(names, 1)
    assert pool_records(logging.INFO, "recovered") == dict.fromkeys(names, 1)
    # No traceback from anyone, and nothing from the operator at ERROR.
    assert [r for r in caplog.records if r.exc_info or r.exc_text] == []
    assert [
        r for r in caplog.records if r.name.startswith("tide_operator") and r.levelno >= 40
    ] == []


async def test_transient_403_does_not_flip_ready(
    runtime: Runtime,
    gateway: ApiGateway,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
) -> None:
    exporter.set("default", waiting=2)
    await api.create(POOLS, pool_body("calm", exporter_url=exporter.url))
    await eventually(lambda: (c := condition(emulator, "calm", "Ready")) and c["status"] == "True")
    await wait(10)  # the tick after the first scale rewrites the decision; let it
    ready = condition(emulator, "calm", "Ready")
    writes_before = len(emulator.writes)
    # Right after a restart, RBAC denies the operator's requests for three ticks (15 s),
    # while the pool needs to grow (at steady state it makes none: it reads from watches).
    gateway.deny(3, path="/scale")
    exporter.set("default", waiting=3)
    await eventually(lambda: gateway.denied == 3)
    await eventually(lambda: replicas(emulator, "calm-workers") == 3)
    written = emulator.writes[writes_before:]
    scaled_at = next(i for i, (_, path) in enumerate(written) if path.endswith("/scale"))
    # Nothing said about the pool while denied; Ready never flipped.
    assert [path for _, path in written[:scaled_at] if path.endswith("/status")] == []
    assert condition(emulator, "calm", "Ready") == ready
    assert (
        runtime.metrics.registry.get_sample_value(
            "tide_operator_api_failures_total", {"cause": "403"}
        )
        == 3.0
    )


async def test_lasting_403_is_reported_after_the_grace(
    runtime: Runtime,
    gateway: ApiGateway,
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
) -> None:
    exporter.set("default", waiting=2)
    await api.create(POOLS, pool_body("denied", exporter_url=exporter.url))
    await eventually(
        lambda: (c := condition(emulator, "denied", "Ready")) and c["status"] == "True"
    )
    loop = asyncio.get_running_loop()
    # A Role that lost its deployments/scale rule: denied until someone fixes it.
    gateway.deny(10_000, path="/scale")
    exporter.set("default", waiting=3)
    denied_at = loop.time()
    failed = await eventually(
        lambda: (c := condition(emulator, "denied", "Ready")) and c["status"] == "False" and c
    )
    assert loop.time() - denied_at >= API_ERROR_GRACE
    assert failed["reason"] == "ApiError"
    assert "403" in failed["message"]
