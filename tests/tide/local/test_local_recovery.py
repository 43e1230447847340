"""Local mode puts back what a dead worker process held (``LocalWorkers`` with
``Recoveries``), on real Redis with real stock-app workers started the way ``tide up``
starts them.

The pool's worker is SIGKILLed (its main process, as the OOM killer does); the next look
at the pool reaps it, and its messages are back in the queue within the lease's TTL, where
the replacement worker the pool starts runs them. Asserted on the broker's state and the
tasks' own completion count, with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockapp_harness import StockBroker, produce, redis_broker, stock_environment

from tide.local.pools import load_pools
from tide.local.workers import LocalWorkers
from tide_celery.layout import LEASE_TTL, RECOVERED_KEY
from tide_celery.recovery import Recoveries
from tide_operator.adapters.targets import CeleryInspectProbe

HELD = 8  # concurrency 2 and the stock app's prefetch multiplier 4


@pytest.fixture
def broker() -> Iterator[StockBroker]:
    corner = redis_broker()
    yield corner
    corner.cleanup()


async def _until(probe: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_dead_local_worker_is_recovered_and_its_tasks_run_again(
    broker: StockBroker, tmp_path: Path
) -> None:
    client = broker.client()
    prefix = broker.keyprefix
    (tmp_path / "pools.yaml").write_text(
        "kind: WorkerPool\nmetadata: {name: p}\n"
        "spec: {queues: [orders], concurrency: 2, template: {}, worker: {prefetchMultiplier: 4}}\n"
    )
    (pool,) = load_pools(tmp_path / "pools.yaml")
    env = stock_environment(broker, **broker.env(acks_late=True), PYTHONUNBUFFERED="1")
    produce(broker, [("stockapp.tasks.hold", [broker.run], {"queue": "orders"})] * HELD)

    async def scenario() -> float:
        workers = LocalWorkers(
            pool=pool,
            env=env,
            log_dir=tmp_path,
            program=("celery", "-A", "stockapp", "worker"),
            probe=CeleryInspectProbe(broker.url, transport_options=broker.transport_options),
            recoveries=Recoveries(broker.url, transport_options=broker.transport_options),
        )
        try:
            await workers.scale(1, reason="a test")
            await _until(
                lambda: broker.running() == 2 and int(client.hlen(prefix + "unacked")) == HELD,
                timeout=60,
                what="the worker holding every message",
            )
            (replica,) = workers.running.values()
            os.kill(replica.process.pid, signal.SIGKILL)
            replica.process.wait(10)
            killed = time.monotonic()
            # The orphaned pool processes go too, as a killed pod's would.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica.process.pid, signal.SIGKILL)
            assert await workers.current() == 0  # reaped: the recovery starts
            await _until(
                lambda: int(client.llen(prefix + "orders")) == HELD,
                # The lease lapses within LEASE_TTL; the rest is slack for a loaded machine,
                # still far below the transport's visibility timeout (an hour).
                timeout=LEASE_TTL + 20,
                what="the dead worker's messages back in the queue",
            )
            elapsed = time.monotonic() - killed
            assert int(client.hlen(prefix + "unacked")) == 0
            assert int(client.hget(prefix + RECOVERED_KEY, "orders") or 0) == HELD
            assert workers.recoveries is not None
            await workers.recoveries.settle()
            assert [r.total for r in workers.recoveries.results] == [HELD]

            # The pool's replacement runs them (once the back-off after a death has passed).
            deadline = time.monotonic() + 30
            while not workers.running and time.monotonic() < deadline:
                await workers.scale(1, reason="a test")
                await asyncio.sleep(0.2)
            broker.release(HELD)
            await _until(
                lambda: (
                    broker.done() == HELD
                    and int(client.llen(prefix + "orders")) == 0
                    and int(client.hlen(prefix + "unacked")) == 0
                ),
                timeout=60,
                what="every recovered task completed by the replacement",
            )
            return elapsed
        finally:
            await workers.drain(grace=30, force=asyncio.Event())

    elapsed = asyncio.run(scenario())
    assert elapsed < LEASE_TTL + 20, elapsed  # the lease, not the visibility timeout
