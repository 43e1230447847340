"""The stock app as its team runs it, with nothing of Tide's: the baseline every other
stock-app test builds on. Its worker consumes all three queues, and its priorities land
where kombu's default Redis layout puts them (four lists per queue, joined by
``\\x06\\x16``), which is the layout Tide's exporter must read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from stockapp_harness import QUEUES, StockBroker, Workers, produce

SEP = "\x06\x16"


@pytest.mark.broker
def test_stock_worker_runs_tasks_from_every_queue(
    stock_broker: StockBroker,
    stock_workers: Workers,
    wait: Callable[..., Any],
) -> None:
    produce(
        stock_broker,
        [("stockapp.tasks.hold", [stock_broker.run], {"queue": queue}) for queue in QUEUES],
        integration=False,
    )
    worker = stock_workers.start(stock_broker, concurrency=3, integration=False)
    wait(
        lambda: stock_broker.running() == 3,
        timeout=60,
        what="one held task per queue running",
        explain=worker.tail,
    )
    stock_broker.release(3)
    wait(lambda: stock_broker.running() == 0, timeout=30, what="held tasks finished")


def test_priorities_land_on_kombus_default_lists(
    redis_stock_broker: StockBroker,
) -> None:
    broker = redis_stock_broker
    produce(
        broker,
        [
            *[("stockapp.tasks.send_email", [f"{n}@x"], {"priority": 5}) for n in range(3)],
            *[("stockapp.tasks.place_order", [n], {}) for n in range(2)],
            ("stockapp.tasks.build_report", [broker.run], {"priority": 9}),
        ],
        integration=False,
    )
    client = broker.client()
    lengths = {
        name: client.llen(broker.keyprefix + name)
        for name in ("orders", "emails", f"emails{SEP}3", f"reports{SEP}9")
    }
    # Priority 5 falls in kombu's step 3 (steps 0/3/6/9); no priority is step 0.
    assert lengths == {"orders": 2, "emails": 0, f"emails{SEP}3": 3, f"reports{SEP}9": 1}
