"""Flower for any app, as the chart runs it (``tide flower``: the broker and the app's
transport options, no ``-A``): it lists a stock worker and its tasks, and the stock worker
goes on answering and consuming afterwards. Marked ``broker``: Redis and RabbitMQ.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from stockapp_harness import StockBroker, Workers, produce

BIN = Path(sys.executable).parent
HOLD = "stockapp.tasks.hold"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.broker
def test_flower_on_the_broker_alone_shows_the_stock_worker(
    stock_broker: StockBroker, stock_workers: Workers, tmp_path: Path, wait: Callable[..., Any]
) -> None:
    broker = stock_broker
    name = "worker@stock-flower"
    stock = stock_workers.start(broker, queues=["orders"], concurrency=2, name=name)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.test",
        "CELERY_BROKER_URL": broker.url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
        # The chart sets FLOWER_BASIC_AUTH; here the API is read without a login.
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    env.pop("CELERY_BROKER_KEYPREFIX", None)
    port = free_port()
    log = tmp_path / "flower.log"
    flower = subprocess.Popen(
        [str(BIN / "tide"), "flower", "--port", str(port), "--address=127.0.0.1"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def workers() -> dict[str, Any] | None:
            if flower.poll() is not None:
                pytest.fail(log.read_text()[-3000:])
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/workers", params={"refresh": "1"}, timeout=10
                )
            except httpx.HTTPError:
                return None
            found: dict[str, Any] = response.json() if response.is_success else {}
            return found if name in found else None

        seen = wait(workers, timeout=90, what="Flower to list the stock worker", explain=stock.tail)
        # What Flower read from the worker, through the app's broker and layout.
        assert seen[name]["stats"]["pool"]["max-concurrency"] == 2
        assert "stockapp.tasks.hold" in seen[name]["registered"]
        # Flower itself loaded no app: nothing of Tide's tasks in its own registry.
        assert "tide.samples" not in log.read_text()

        # The stock worker consumes as before while Flower watches.
        produce(broker, [(HOLD, [broker.run], {"queue": "orders"})] * 2)
        wait(lambda: broker.running() == 2, timeout=30, what="both held", explain=stock.tail)
        broker.release(2)
        wait(lambda: broker.done() == 2, timeout=30, what="both done", explain=stock.tail)
    finally:
        flower.terminate()
        flower.wait(30)
