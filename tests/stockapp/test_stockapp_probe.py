"""The operator's probe against real stock workers, built as the operator builds it
(``busy_probe_from_env``: the broker URL and the app's transport options, nothing of
Tide's layout): the worker that holds tasks is found busy, an idle one idle, a name no
worker answers to unknown; and each says what it really runs (``inspect conf``/``stats``).
The same answer says how long the running task has run. The stock workers keep consuming
afterwards: the probe disturbs nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from stockapp_harness import StockBroker, Workers

from tide_operator.edge.handlers import busy_probe_from_env
from tide_operator.resources.safety import WorkerReport

HOLD = "stockapp.tasks.hold"


@pytest.mark.broker
def test_probe_finds_the_busy_worker_and_what_each_runs(
    stock_broker: StockBroker,
    stock_workers: Workers,
    stock_producer: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    broker = stock_broker
    probe = busy_probe_from_env(
        {
            "CELERY_BROKER_URL": broker.url,
            "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
        }
    )
    assert probe is not None
    busy_node, idle_node, gone = "worker@stock-busy", "worker@stock-idle", "worker@stock-gone"
    # One slot on the busy worker: one held task runs, and with Celery's default prefetch
    # (4 per slot) it reserves the next ones, which a stopping worker would sit on too.
    stock_workers.start(broker, queues=["orders"], concurrency=1, name=busy_node)
    stock_workers.start(broker, queues=["emails"], concurrency=2, name=idle_node, integration=False)
    nodes = [busy_node, idle_node, gone]

    def all_answer() -> dict[str, int | None] | None:
        found = dict(asyncio.run(probe.busy(nodes)))
        return found if found[busy_node] is not None and found[idle_node] is not None else None

    wait(all_answer, timeout=60, what="both stock workers to answer the probe")

    app = stock_producer(broker)
    sent = time.time()
    for _ in range(3):
        app.tasks[HOLD].apply_async(args=[broker.run], queue="orders")
    wait(
        lambda: broker.running() == 1,
        timeout=30,
        what="one held task running",
        explain=lambda: stock_workers.started[0].tail(),
    )
    busy = wait(
        lambda: (b := asyncio.run(probe.busy(nodes)))[busy_node] == 3 and b,
        timeout=30,
        what="the busy worker to hold all three (one running, two reserved)",
        explain=lambda: str(asyncio.run(probe.busy(nodes))),
    )
    assert dict(busy) == {busy_node: 3, idle_node: 0, gone: None}
    # The same question says how long the running task has run, from the start time the
    # worker reports (the reserved two have none): the drain-safety rule's evidence.
    counts, age = asyncio.run(probe.busy_with_age(nodes))
    assert dict(counts) == dict(busy)
    assert age is not None
    assert 0.0 <= age <= time.time() - sent, age

    reports = asyncio.run(probe.reports(nodes))
    redis = broker.is_redis
    assert reports[busy_node] == WorkerReport(
        busy_node, acks_late=False, prefetch_multiplier=4, concurrency=1, integration=redis
    )
    assert reports[idle_node] == WorkerReport(
        idle_node, acks_late=False, prefetch_multiplier=4, concurrency=2, integration=False
    )
    assert reports[gone] is None

    # The workers go on as before: the held tasks finish when released, nothing is lost.
    broker.release(3)
    wait(
        lambda: broker.done() >= 3 and broker.running() == 0,
        timeout=30,
        what="held tasks done",
        explain=lambda: (
            f"done {broker.done()} running {broker.running()}\n" + stock_workers.started[0].tail()
        ),
    )
    probe.close()
