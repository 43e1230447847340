"""Two ``tide operator`` processes: one acts, the other stands by and takes over.

Real processes (the command the chart runs) against the API emulator in this test's
process, on the real clock, with the chart's RBAC (namespace scope). Each replica logs in
with its own token (``OPERATOR_TOKEN.<name>``), so the emulator's request log says which
replica made each request; every figure below is counted from that log and from the
objects, never from the operators' own words.

* while both run, the standby writes nothing (no scale, no status, no Event, no Lease
  write), and the acting one is named in every pool's ``status.actingReplica``;
* SIGKILL of the acting replica: the standby holds the Lease and every pool's status names
  it within ``TAKEOVER_BOUND`` seconds, with no scale patch, no Deployment write and no
  Event after the kill (the pools' queues do not change, so nothing should move);
* SIGTERM of the acting replica (a rolling update, a drain): it releases the Lease and the
  standby takes over at its next read, well within a lease duration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kube_emulator import OPERATOR_TOKEN, WORKERPOOLS, TideEmulator
from operator_process import OperatorProcess
from pool_harness import (
    NS,
    USAGE,
    FakeExporter,
    events,
    obj,
    operator_grants,
    pool_body,
    replicas,
)

from tide_operator.adapters.kube import KubeApi

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime(False), pytest.mark.timeout(240)]

POOLS = [f"ha-{i}" for i in range(3)]
WAITING = 3  # waiting tasks: 3 workers per pool at the default target
LEASE_DURATION = 8  # the chart's defaults
LEASE_RENEW = 2
# Issue 14: a killed acting replica is replaced within 15 s.
TAKEOVER_BOUND = 15.0


class Replica(OperatorProcess):
    """One ``tide operator -n default`` process, named ``name`` (its POD_ID)."""

    def __init__(self, name: str, *, url: str, folder: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
        super().__init__(
            name,
            url=url,
            token=f"{OPERATOR_TOKEN}.{name}",
            folder=folder,
            namespace=NS,
            env=env,
            lease_duration=LEASE_DURATION,
            lease_renew=LEASE_RENEW,
        )

    def metric(self, name: str, labels: str = "") -> float | None:
        """A sample of the replica's /metrics, None while it does not serve."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        self.kill(signal.SIGKILL, timeout=30)


async def until(
    probe: Callable[[], Any], *, timeout: float, what: str, explain: Callable[[], str]
) -> Any:
    """Poll ``probe`` on the real clock until truthy; fail with the replicas' logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{explain()}")
        await asyncio.sleep(0.05)


def holder(emulator: TideEmulator) -> str | None:
    lease = emulator.lease(NS)
    return None if lease is None else lease["spec"].get("holderIdentity") or None


def named(emulator: TideEmulator, replica: str) -> bool:
    """Every pool's status names ``replica`` as the one acting."""
    return all(
        ((obj(emulator, WORKERPOOLS, pool) or {}).get("status") or {}).get("actingReplica")
        == replica
        for pool in POOLS
    )


def writes(emulator: TideEmulator, since: int = 0, *, client: str | None = None) -> list[str]:
    """Writes (not Lease ones) the operators made after log entry ``since``."""
    return [
        f"{entry.method} {entry.path}"
        for entry in emulator.log[since:]
        if entry.method in ("POST", "PUT", "PATCH", "DELETE")
        and entry.address is not None
        and entry.address.resource != "leases"
        and entry.user != "system:admin"
        and (client is None or entry.client == client)
    ]


@pytest.fixture
def replicas_started(tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


@pytest_asyncio.fixture()
async def pools(
    emulator: TideEmulator, exporter: FakeExporter, api: KubeApi, request: pytest.FixtureRequest
) -> AsyncIterator[list[str]]:
    emulator.authorize(operator_grants("namespace"))
    exporter.set("default", waiting=WAITING)
    for pool in POOLS:
        await api.create(
            f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools",
            pool_body(pool, exporter_url=exporter.url),
        )
    yield POOLS
    # What the replicas asked for, for test_operator_rbac (the Lease's verbs come from here).
    USAGE.add(emulator, "namespace", request.node.nodeid)


async def test_the_standby_takes_over_a_killed_replica_without_a_spurious_scale(
    emulator: TideEmulator,
    pools: list[str],
    replicas_started: list[Replica],
    tmp_path: Path,
) -> None:
    url = str(emulator.url).rstrip("/")

    def logs() -> str:
        return "\n".join(f"--- {r.name}:\n{r.tail()}" for r in replicas_started)

    a = Replica("op-a", url=url, folder=tmp_path)
    replicas_started.append(a)
    await until(lambda: holder(emulator) == "op-a", timeout=60, what="op-a holds", explain=logs)
    await until(
        lambda: (
            named(emulator, "op-a")
            and all(replicas(emulator, f"{p}-workers") == WAITING for p in pools)
        ),
        timeout=60,
        what="op-a scales every pool and names itself",
        explain=logs,
    )
    b = Replica("op-b", url=url, folder=tmp_path)
    replicas_started.append(b)
    # The standby is up, stands by, and has run its shadow ticks (two per pool).
    await until(
        lambda: (
            b.metric("tide_operator_acting", 'replica="op-b"') == 0.0
            and (b.metric("tide_operator_reconcile_duration_seconds_count") or 0) >= 2 * len(pools)
        ),
        timeout=60,
        what="op-b standing by with warm pools",
        explain=logs,
    )
    assert a.metric("tide_operator_acting", 'replica="op-a"') == 1.0
    # While both run, the standby writes nothing at all, not even the Lease.
    assert writes(emulator, client="op-b") == []
    assert [w for w in emulator.lease_writes if w[2] == "op-b"] == []

    sized = {p: replicas(emulator, f"{p}-workers") for p in pools}
    events_before = [(e.get("reason"), e.get("message")) for e in events(emulator)]
    killed_at_entry = len(emulator.log)
    a.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: holder(emulator) == "op-b", timeout=30, what="op-b holds", explain=logs)
    lease_taken = time.monotonic() - killed
    await until(lambda: named(emulator, "op-b"), timeout=30, what="op-b named", explain=logs)
    status_named = time.monotonic() - killed
    # Two more ticks of every pool as the acting replica (pollingInterval 5 s).
    acting_ticks = b.metric("tide_operator_reconcile_duration_seconds_count") or 0
    await until(
        lambda: (
            (b.metric("tide_operator_reconcile_duration_seconds_count") or 0)
            >= acting_ticks + 2 * len(pools)
        ),
        timeout=30,
        what="two acting ticks of op-b",
        explain=logs,
    )
    after_kill = writes(emulator, killed_at_entry)
    print(
        f"\nfailover (SIGKILL): Lease taken over {lease_taken:.1f}s after the kill, every "
        f"pool's status naming the new replica {status_named:.1f}s after; writes after the "
        f"kill: {after_kill}; load {os.getloadavg()[0]:.1f}"
    )
    assert status_named <= TAKEOVER_BOUND, logs()
    assert [w for w in after_kill if "/scale" in w or "/deployments" in w] == []
    assert {p: replicas(emulator, f"{p}-workers") for p in pools} == sized
    # The only writes: one status per pool, naming the new replica.
    assert sorted(after_kill) == sorted(
        f"PATCH /apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools/{p}/status" for p in pools
    )
    assert [(e.get("reason"), e.get("message")) for e in events(emulator)] == events_before
    assert b.metric("tide_operator_acting", 'replica="op-b"') == 1.0
    assert b.metric("tide_operator_lease_acquisitions_total") == 1.0

    # A clean stop (SIGTERM: a rolling update, a drain) hands over at the next read.
    c = Replica("op-c", url=url, folder=tmp_path)
    replicas_started.append(c)
    await until(
        lambda: (
            c.metric("tide_operator_acting", 'replica="op-c"') == 0.0
            and (c.metric("tide_operator_reconcile_duration_seconds_count") or 0) >= 2 * len(pools)
        ),
        timeout=60,
        what="op-c standing by with warm pools",
        explain=logs,
    )
    stopped_at_entry = len(emulator.log)
    b.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    await until(lambda: holder(emulator) == "op-c", timeout=30, what="op-c holds", explain=logs)
    handover = time.monotonic() - stopped
    await until(lambda: named(emulator, "op-c"), timeout=30, what="op-c named", explain=logs)
    handover_named = time.monotonic() - stopped
    assert b.process.wait(timeout=30) == 0, logs()
    print(
        f"handover (SIGTERM): Lease taken {handover:.1f}s after the signal, statuses naming "
        f"the new replica {handover_named:.1f}s after"
    )
    # Released, not expired: faster than a lease duration.
    assert handover < LEASE_DURATION, logs()
    after_stop = writes(emulator, stopped_at_entry)
    assert [w for w in after_stop if "/scale" in w or "/deployments" in w] == []
    assert {p: replicas(emulator, f"{p}-workers") for p in pools} == sized
    # The released Lease said so (holder emptied) before op-c took it.
    assert any(method == "PUT" and sent == "" for method, _, sent in emulator.lease_writes)
