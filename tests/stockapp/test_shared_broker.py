"""A stock worker and Tide's processes on one Redis: Tide never disturbs the app's worker.

Processes that share a broker share kombu's binding tables (``_kombu.binding.*``) and the
remote-control keys; a process with another key layout (separator, priority lists) writes
entries the others cannot parse, and a Celery 5.4 worker then stops answering and
consuming (``ValueError('not enough values to unpack (expected 3, got 1)')``). Tide's
processes use kombu's default layout, or the app's own through
``TIDE_BROKER_TRANSPORT_OPTIONS``. Here a stock worker (no integration, kombu's defaults)
runs on a Redis keyspace while Tide's exporter, a ``celery -A tide inspect ping`` and a
Tide worker run against the same keyspace; afterwards the stock worker must still answer
``inspect ping`` and consume new tasks, and every binding entry must be one kombu's
default layout can read.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from stockapp_harness import StockBroker, Workers, ping, produce

BIN = Path(sys.executable).parent
HOLD = "stockapp.tasks.hold"
SEP = "\x06\x16"  # kombu's default separator in binding entries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tide_env(broker: StockBroker) -> dict[str, str]:
    """Tide's processes pointed at the app's broker with the app's transport options."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.test",
        "CELERY_BROKER_URL": broker.url,
        "TIDE_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CELERY_BROKER_KEYPREFIX", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    return env


def answers(broker: StockBroker, name: str) -> bool:
    return name in ping(broker, destination=[name])


def binding_entries(broker: StockBroker) -> list[str]:
    client = redis.Redis.from_url(broker.url)
    entries = []
    for table in client.scan_iter(match=broker.keyprefix + "_kombu.binding.*", count=1000):
        entries.extend(member.decode() for member in client.smembers(table))
    return entries


def test_stock_worker_answers_and_consumes_after_tides_processes(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    tmp_path: Path,
    wait: Callable[..., Any],
) -> None:
    broker = redis_stock_broker
    stock = stock_workers.start(broker, concurrency=2, integration=False)
    name = stock.name.replace("%h", socket.gethostname())
    wait(lambda: answers(broker, name), timeout=60, what="stock worker answers", explain=stock.tail)

    env = tide_env(broker)
    # 1. Tide's exporter, discovering queues from the binding tables.
    port = free_port()
    exporter = subprocess.Popen(
        [str(BIN / "tide"), "exporter", "--host", "127.0.0.1", "--port", str(port),
         "--broker-url", broker.url, "--interval", "0.2", "--discovery-interval", "0.5"],
        env=env, stdout=(tmp_path / "exporter.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def discovered() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            return all(f'celery_queue_length{{queue_name="{q}"}}' in text for q in ("emails",))

        wait(discovered, timeout=60, what="Tide's exporter found the app's queues")
    finally:
        exporter.terminate()
        exporter.wait(30)

    # 2. Tide's remote control, as Flower and local mode's scale-in use it.
    ping = subprocess.run(
        [str(BIN / "celery"), "-A", "tide", "inspect", "ping", "--timeout", "5"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert name in ping.stdout

    # 3. A Tide worker on the same keyspace: its own queue, bindings and mailbox.
    tide_name = f"tide-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    tide_worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "tide", "worker", "-Q", "tide-shared", "-c", "1",
         "-n", tide_name, "--loglevel", "INFO"],
        env=env, stdout=(tmp_path / "tide-worker.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait(
            lambda: answers(broker, tide_name),
            timeout=90,
            what="Tide's worker answers",
            explain=lambda: (tmp_path / "tide-worker.log").read_text()[-3000:],
        )
    finally:
        tide_worker.terminate()
        tide_worker.wait(60)

    # Every binding entry is one kombu's default layout reads: routing key, pattern, queue.
    entries = binding_entries(broker)
    assert entries
    assert all(len(entry.split(SEP)) == 3 for entry in entries), entries

    # The stock worker still answers, and consumes what arrives now.
    assert answers(broker, name), stock.tail()
    produce(broker, [(HOLD, [broker.run], {"queue": "orders"})] * 4, integration=False)
    wait(
        lambda: broker.running() == 2, timeout=30, what="stock worker consumes", explain=stock.tail
    )
    broker.release(4)
    wait(lambda: broker.done() == 4, timeout=30, what="four new tasks done", explain=stock.tail)
