"""Consolidation on real stock workers: the operator's probe (built as the operator builds
it) tells a busy worker to stop consuming (``cancel_consumer``); the worker finishes the task
it runs, takes no new one even once idle with free slots, and takes work again when told
to (``add_consumer``). This is what ``shutdown.consolidate`` rests on: a cordoned worker is
removed only once idle, so no task is cut, whatever its length.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from stockapp_harness import StockBroker, Workers

from tide_operator.edge.handlers import busy_probe_from_env

HOLD = "stockapp.tasks.hold"


@pytest.mark.broker
def test_a_cordoned_worker_finishes_its_task_takes_no_new_one_and_reopens(
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
    node = "worker@stock-cordon"
    worker = stock_workers.start(
        broker,
        queues=["orders"],
        concurrency=2,
        name=node,
        extra=["--prefetch-multiplier", "1"],
    )
    wait(
        lambda: asyncio.run(probe.busy([node]))[node] is not None,
        timeout=60,
        what="the stock worker to answer",
        explain=worker.tail,
    )
    app = stock_producer(broker)
    app.tasks[HOLD].apply_async(args=[broker.run], queue="orders")
    wait(lambda: broker.running() == 1, timeout=30, what="one held task running")

    asyncio.run(probe.stop_consuming([node], ["orders"]))
    # Published after the worker confirmed: a consuming worker with a free slot would start
    # it at once.
    app.tasks[HOLD].apply_async(args=[broker.run], queue="orders")
    assert asyncio.run(probe.busy([node]))[node] == 1

    # The running task finishes; the worker is idle with two free slots and still takes
    # nothing: the second task waits.
    broker.release(1)
    wait(lambda: broker.done() == 1, timeout=30, what="the first task done")
    wait(
        lambda: asyncio.run(probe.busy([node]))[node] == 0,
        timeout=30,
        what="the cordoned worker idle",
    )
    assert broker.running() == 0
    assert broker.done() == 1

    asyncio.run(probe.resume_consuming([node], ["orders"]))
    wait(lambda: broker.running() == 1, timeout=30, what="the waiting task taken on reopening")
    broker.release(1)
    wait(lambda: broker.done() == 2, timeout=30, what="both tasks done", explain=worker.tail)
    probe.close()
