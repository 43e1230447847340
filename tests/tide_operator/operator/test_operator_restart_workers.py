"""An operator killed mid-scale-up with real workers busy: the pool goes on, no busy worker
is removed, and every task runs once.

``test_operator_restart`` proves the policy's side on fake metrics; this test puts the
parts together as a cluster would: ``tide operator`` as a process (SIGKILLed, then a new
one, as a Deployment replaces a crashed pod), the API emulator (the real API's contract and
the chart's RBAC), the real exporter reading a real Redis, and a process kubelet that runs
the worker Deployment's pods as real ``celery -A stockapp worker`` processes named
``worker@<pod>``. Eight ``hold`` tasks keep every worker slot busy until the test releases
them, so any pod deleted before the release is a busy worker cut from the pool: with late
acks its warm shutdown would wait on its held task (or, with a shorter grace, cut it).

What it asserts, on state: the Deployment's size never went down and no pod was deleted
while the tasks were held; the new operator took the pool from 3 to 4; after the release
every task ended exactly once and the pool scaled in to one worker.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_emulator import OPERATOR_TOKEN, TideEmulator
from operator_process import OperatorProcess
from pool_harness import NS, USAGE, eventually, operator_grants
from process_kubelet import ProcessKubelet
from stockapp_harness import StockBroker, Worker, Workers, produce

from tide.exporter.config import ExporterConfig
from tide.exporter.server import RunningExporter, start_exporter
from tide_operator.adapters.kube import KubeApi
from tide_operator.resources.deployments import worker_hostname

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime(False), pytest.mark.timeout(180)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
HELD = 8  # 4 workers of 2 slots, every slot busy
CONCURRENCY = 2


class StockContainer:
    """A pod's stock-app worker; ready once Celery logged that it is."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.process = worker.process

    def ready(self) -> bool:
        return " ready." in self.worker.tail(100_000)


@pytest.fixture
def queue_exporter(broker: StockBroker) -> Iterator[RunningExporter]:
    """Tide's exporter on the stock app's broker, read every 0.2 s."""
    running = start_exporter(
        ExporterConfig(
            broker_url=broker.url,
            transport_options=broker.transport_options,
            queues=("orders",),
            interval=0.2,
            host="127.0.0.1",
            port=0,
        )
    )
    yield running
    running.stop()


async def test_an_operator_killed_mid_scale_keeps_busy_workers_and_every_task_runs_once(
    emulator: TideEmulator,
    api: KubeApi,
    broker: StockBroker,
    workers: Workers,
    queue_exporter: RunningExporter,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    emulator.authorize(operator_grants("namespace"))

    def start(pod: str) -> StockContainer:
        return StockContainer(
            workers.start(
                broker,
                queues=["orders"],
                concurrency=CONCURRENCY,
                acks_late=True,
                name=worker_hostname(pod),
                # One message per slot, as Tide's reference settings have it: with the
                # stock default (4 per slot) the first worker would hold all eight.
                extra=["--prefetch-multiplier", "1"],
            )
        )

    # The operator's pod environment: the broker, for the busy probe and recovery.
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker.url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
    }
    operators: list[OperatorProcess] = []

    def operator(name: str) -> OperatorProcess:
        started = OperatorProcess(
            name,
            url=str(emulator.url),
            token=f"{OPERATOR_TOKEN}.{name}",
            folder=tmp_path,
            env=env,
            lease_duration=3,
            lease_renew=0.5,
        )
        operators.append(started)
        return started

    produce(broker, [("stockapp.tasks.hold", [broker.run], {"queue": "orders"})] * HELD)
    await api.create(
        POOLS,
        {
            "apiVersion": "tide.dev/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "grow", "namespace": NS},
            "spec": {
                "queues": ["orders"],
                "concurrency": CONCURRENCY,
                "minReplicas": 1,
                "maxReplicas": 4,
                "pollingInterval": 1,
                "metrics": {"exporter": {"url": queue_exporter.url + "/metrics"}},
                "template": {"image": "stockapp:test"},
                # One worker more per 4 s, so the kill lands half way up; scale-in
                # soon after the work is done, so the test sees it.
                "behavior": {
                    "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 4}]},
                    "scaleDown": {
                        "stabilizationWindowSeconds": 2,
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
                    },
                },
            },
        },
    )
    try:
        async with ProcessKubelet(
            emulator, namespace=NS, deployment="grow-workers", start=start
        ) as kubelet:
            record = kubelet.record

            def size() -> int:
                return record.replicas[-1][1] if record.replicas else 0

            first = operator("a")
            await eventually(lambda: size() == 3, timeout=90, what="the pool three quarters up")
            first.kill(signal.SIGKILL)
            operator("b")
            await eventually(
                lambda: size() == 4 and broker.running() == HELD,
                timeout=90,
                what="four workers running every held task",
            )
            # Every worker held tasks all along: no size went down, no pod was deleted.
            assert record.shrank() == [], record.replicas
            assert record.deleted == [], record.deleted
            sizes = [n for _, n in record.replicas]
            assert sizes == sorted(sizes), sizes
            assert sizes[-1] == 4, sizes

            broker.release(HELD)
            await eventually(lambda: broker.done() == HELD, timeout=60, what="every task done")
            await eventually(
                lambda: size() == 1 and len(kubelet.pods) == 1,
                timeout=60,
                what="the pool scaled in to one worker",
            )
            assert broker.done() == HELD  # once each: nothing ran twice
            assert record.restarts == []  # no worker died
    finally:
        for started in operators:
            started.stop()
        USAGE.add(emulator, "namespace", request.node.nodeid)
