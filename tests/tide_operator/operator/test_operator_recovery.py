"""Dead-worker recovery through the operator: a worker pod deleted while its worker held
messages puts them back in their queue, counted and reported as an Event on the pool.

The operator (kopf, the API emulator held to the real API's contract and the chart's RBAC)
watches the pool's pods; the worker is a real ``celery -A stockapp worker`` on real Redis,
named as the worker in that pod is (``worker@<pod name>``). Real time, not ``looptime``:
recovery waits on the worker's lease, which real Redis expires.

Each test proves one thing:

* a pod deleted after its worker was killed: the messages are back, within the lease's
  TTL of the kill, and the pool shows a ``WorkerRecovered`` Event and the counter; the
  same for a pod of an adopted Deployment (``scaleTargetRef``), which carries the
  Deployment's labels and not the pool's;
* a pod deleted while its worker still runs (a node partitioned from the API server, or
  a force deletion): nothing moves while the lease is renewed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from kube_emulator import TideEmulator
from pool_harness import (
    NS,
    FakeExporter,
    deployment_body,
    events,
    eventually,
    pod_body,
    pool_body,
)
from stockapp_harness import StockBroker, Worker, Workers, produce

from tide_celery.layout import LEASE_TTL
from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import Runtime, pod_gone, recoveries_for
from tide_operator.resources.deployments import LABEL_POOL, worker_hostname
from tide_operator.resources.status import WORKER_RECOVERED

pytestmark = [pytest.mark.timeout(120)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
#: The team's own labels on an adopted Deployment's pods (no pool label).
TEAM_LABELS = {"app": "stockapp-orders", "tier": "worker"}
HELD = 8  # -c 2, the stock app's prefetch multiplier 4


def _unacked(broker: StockBroker) -> int:
    return int(broker.client().hlen(broker.keyprefix + "unacked"))


def _waiting(broker: StockBroker) -> int:
    return int(broker.client().llen(broker.keyprefix + "orders"))


def _recovered_sample(runtime: Runtime, pool: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "tide_workerpool_recovered_messages_total",
        {"namespace": NS, "workerpool": pool, "queue_name": "orders"},
    )
    return float(value or 0.0)


async def _pool_with_pod(
    api: KubeApi,
    operator: Runtime,
    broker: StockBroker,
    workers: Workers,
    exporter: FakeExporter,
    *,
    pool: str,
    adopted: bool = False,
) -> tuple[str, Worker]:
    operator.recoveries = recoveries_for(
        operator, broker.url, transport_options=broker.transport_options
    )
    if adopted:
        # The team's Deployment, adopted by the pool; its pods carry the team's labels.
        await api.create(DEPLOYMENTS_PATH, deployment_body("team", replicas=1, labels=TEAM_LABELS))
        # Another pod of the namespace, of no pool: its death is nobody's to recover.
        await api.create(PODS_PATH, pod_body("bystander", labels={"app": "other"}))
        spec: dict[str, Any] = {"scaleTargetRef": {"name": "team"}, "queues": ["orders"]}
        await api.create(POOLS, pool_body(pool, exporter_url=exporter.url, minReplicas=1, **spec))
        pod, labels = "team-5c7b9-q8w2n", TEAM_LABELS
    else:
        await api.create(POOLS, pool_body(pool, exporter_url=exporter.url, minReplicas=1))
        pod, labels = f"{pool}-workers-7d9f8-x2x4q", {LABEL_POOL: pool}
    await api.create(PODS_PATH, pod_body(pod, labels=labels))
    produce(broker, [("stockapp.tasks.hold", [broker.run], {"queue": "orders"})] * HELD)
    # The worker that pod runs: its node name is the one the operator derives from the pod.
    worker = workers.start(
        broker, queues=["orders"], concurrency=2, acks_late=True, name=worker_hostname(pod)
    )
    assert operator.loops is not None
    await eventually(lambda: (NS, pool) in operator.loops, timeout=30, what="the pool watched")
    await eventually(
        lambda: broker.running() == 2 and _unacked(broker) == HELD,
        timeout=60,
        what="the worker holding every message",
    )
    return pod, worker


async def _delete(api: KubeApi, pod: str) -> None:
    # The kubelet's part: the pod object goes once its containers are gone.
    await api._send("DELETE", f"{PODS_PATH}/{pod}")


@pytest.mark.asyncio
@pytest.mark.parametrize("adopted", [False, True], ids=["owned", "adopted"])
async def test_a_deleted_pods_messages_are_back_and_reported(
    emulator: TideEmulator,
    api: KubeApi,
    operator: Runtime,
    exporter: FakeExporter,
    broker: StockBroker,
    workers: Workers,
    adopted: bool,
) -> None:
    exporter.set("orders", waiting=0, inflight=HELD)
    pod, worker = await _pool_with_pod(
        api, operator, broker, workers, exporter, pool="rec", adopted=adopted
    )
    if adopted:
        # A pod of no pool goes first: nothing is recovered for it.
        await _delete(api, "bystander")
    os.killpg(worker.process.pid, signal.SIGKILL)  # the container and its pool processes
    worker.process.wait(10)
    killed = time.monotonic()
    await _delete(api, pod)

    await eventually(
        lambda: _waiting(broker) == HELD and _unacked(broker) == 0,
        timeout=LEASE_TTL + 20,
        what="the dead worker's messages back in the queue",
    )
    # The lease, not the visibility timeout (an hour): slack for a loaded machine.
    assert time.monotonic() - killed < LEASE_TTL + 20
    found = await eventually(
        lambda: events(emulator, WORKER_RECOVERED), timeout=10, what="the Event"
    )
    (event,) = found
    assert operator.recoveries is not None
    assert [r.node for r in operator.recoveries.results] == [worker_hostname(pod)]
    assert event["involvedObject"]["name"] == "rec"
    assert event["type"] == "Warning"
    assert f"{HELD} message(s) of {worker_hostname(pod)}" in event["message"]
    assert _recovered_sample(operator, "rec") == HELD


@pytest.mark.asyncio
async def test_a_pod_deleted_while_its_worker_lives_keeps_its_messages(
    emulator: TideEmulator,
    api: KubeApi,
    operator: Runtime,
    exporter: FakeExporter,
    broker: StockBroker,
    workers: Workers,
) -> None:
    exporter.set("orders", waiting=0, inflight=HELD)
    pod, worker = await _pool_with_pod(api, operator, broker, workers, exporter, pool="alive")
    await _delete(api, pod)  # the worker still runs and renews its lease
    deleted = time.monotonic()
    recoveries = operator.recoveries
    assert recoveries is not None
    node = worker_hostname(pod)
    # The recovery looks, finds the lease live, and keeps looking for longer than a dead
    # worker's lease would take to lapse: the lease is renewed, so nothing moves.
    await eventually(
        lambda: (
            node in recoveries.pending
            and recoveries.pending[node].leased == HELD
            and time.monotonic() - deleted > LEASE_TTL + 1
        ),
        timeout=4 * LEASE_TTL,
        what="the recovery waiting on a live lease past a lease's TTL",
    )
    assert recoveries.pending[node].restored == {}
    assert _unacked(broker) == HELD
    assert _waiting(broker) == 0
    assert events(emulator, WORKER_RECOVERED) == []

    broker.release(HELD)
    await eventually(
        lambda: broker.done() == HELD and _unacked(broker) == 0,
        timeout=60,
        what="the living worker finishing its own tasks, each once",
    )
    assert _waiting(broker) == 0
    assert _recovered_sample(operator, "alive") == 0
    assert worker.process.poll() is None


@pytest.mark.parametrize(
    ("event_type", "pod", "gone"),
    [
        # The pod object is gone: its containers were stopped (or it was force-deleted).
        ("DELETED", {"status": {"phase": "Running"}}, "pod deleted"),
        # Graceful deletion under way, or the node controller evicting a lost node's pods.
        (
            "MODIFIED",
            {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}},
            "pod being deleted",
        ),
        # Evicted (node pressure): the phase says Failed, with the kubelet's reason.
        ("MODIFIED", {"status": {"phase": "Failed", "reason": "Evicted"}}, "pod failed (Evicted)"),
        # Running, pending, or a container restarting in place: not a death of the pod
        # (a restarted worker recovers its own predecessor).
        ("MODIFIED", {"status": {"phase": "Running"}}, None),
        ("ADDED", {"status": {"phase": "Pending"}}, None),
        # The initial listing of a healthy pod.
        (None, {"status": {"phase": "Running"}}, None),
    ],
)
def test_which_pod_events_report_a_death(
    event_type: str | None, pod: dict[str, Any], gone: str | None
) -> None:
    assert pod_gone(event_type, pod) == gone
