"""SharedReports: the worker-report asks of one moment go out as one broadcast.

A real stock-app worker on its own Redis corner answers; the other names are workers that
never answer (a pod still starting, remote control off). Asked pool by pool, each silent
pool holds a thread for two broadcasts' timeouts; gathered, the moment costs one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import pytest
from pool_harness import eventually
from stockapp_harness import StockBroker, Workers

from tide_operator.adapters.targets import CeleryInspectProbe, SharedReports
from tide_operator.resources.safety import WorkerReport

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

POOLS = 30


class Counting:
    """The real probe, counting its broadcasts and the workers each one named."""

    def __init__(self, probe: CeleryInspectProbe) -> None:
        self.probe = probe
        self.calls: list[list[str]] = []

    async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]:
        self.calls.append(list(hostnames))
        return await self.probe.reports(hostnames)


async def test_thirty_pools_asking_at_once_cost_one_broadcast(
    broker: StockBroker, workers: Workers, real_probe: CeleryInspectProbe
) -> None:
    worker = workers.start(broker, queues=["orders"], concurrency=2, name="worker@stock-shared")

    async def answered() -> bool:
        return (await real_probe.reports(["worker@stock-shared"])).get(
            "worker@stock-shared"
        ) is not None

    await eventually(answered, timeout=60, what=f"the worker to answer: {worker.tail()}")
    counting = Counting(real_probe)
    shared = SharedReports(counting)
    # Pool 0 runs the real worker; every pool has one silent worker of its own.
    asks = [
        (["worker@stock-shared"] if i == 0 else []) + [f"worker@silent-{i}"] for i in range(POOLS)
    ]
    started = time.monotonic()
    answers = await asyncio.gather(*(shared.reports(hosts) for hosts in asks))
    took = time.monotonic() - started

    assert shared.sent == 1
    assert len(counting.calls) == 1
    assert sorted(counting.calls[0]) == sorted({h for hosts in asks for h in hosts})
    # Each pool gets its own workers' answers, and only those.
    assert [sorted(a) for a in answers] == [sorted(hosts) for hosts in asks]
    report = answers[0]["worker@stock-shared"]
    assert report is not None
    assert report.node == "worker@stock-shared"
    assert report.concurrency == 2
    assert all(a[f"worker@silent-{i}"] is None for i, a in enumerate(answers))
    # One moment's wait (two broadcasts of the probe's timeout), not thirty pools' worth.
    assert took < 4 * real_probe.timeout + 2, took


async def test_an_ask_while_a_broadcast_is_out_starts_the_next() -> None:
    class Slow:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []
            self.release = asyncio.Event()

        async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]:
            self.calls.append(list(hostnames))
            await self.release.wait()
            return {}

    slow = Slow()
    shared = SharedReports(slow, gather=0.01)
    first = asyncio.ensure_future(shared.reports(["a"]))
    await eventually(lambda: len(slow.calls) == 1, timeout=5, what="the first broadcast")
    second = asyncio.ensure_future(shared.reports(["b"]))
    await eventually(lambda: len(slow.calls) == 2, timeout=5, what="the second broadcast")
    slow.release.set()
    assert await first == {"a": None}
    assert await second == {"b": None}
    assert slow.calls == [["a"], ["b"]]


async def test_a_failed_broadcast_fails_every_asker_of_its_moment_and_is_not_kept() -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        async def reports(self, hostnames: Sequence[str]) -> Mapping[str, WorkerReport | None]:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("broker gone")
            return dict.fromkeys(hostnames)

    broken = Broken()
    shared = SharedReports(broken, gather=0.01)
    results = await asyncio.gather(
        shared.reports(["a"]), shared.reports(["b"]), return_exceptions=True
    )
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert await shared.reports(["a"]) == {"a": None}
    assert broken.calls == 2
