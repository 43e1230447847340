"""Benchmark of dead-worker recovery: how long a killed worker's messages take to come back.

A real ``celery -A stockapp worker`` (the stock app of ``tests/stockapp``: kombu's defaults,
``-c 2``, prefetch multiplier 4, late acks so the running tasks are held too) takes
``HELD`` = 8 ``hold`` tasks (two running, six prefetched); a second worker waits idle on the
same queue. The first worker is then SIGKILLed with its pool processes (what an OOM kill
of a container, an evicted pod or a lost node does), and the clock starts.

* Redis: the death is visible at once (the process is reaped, as local mode sees it; the
  operator sees a pod deletion within a watch event), so "visible -> back" is measured from
  the kill: ``tide_celery.recovery.recover_when_lapsed`` runs at once and returns when the
  messages are back in the queue (it waits for the worker's lease to lapse, at most
  ``LEASE_TTL`` seconds after the last renewal). End to end: kill -> all eight tasks
  completed by the other worker (the test releases them as soon as they run again).
  Without recovery the messages wait for kombu's visibility timeout: 7,200 s with Tide's
  defaults (``2 x TIDE_LONGEST_TASK_SECONDS``), one hour with kombu's.
  Also: kill -> the first re-run completed on the other worker (the tasks' tokens are
  released right after the kill, so a re-run ends as soon as it starts).
* RabbitMQ: nothing of Tide's runs; the broker requeues a closed connection's
  unacknowledged messages, which the idle worker takes at once. Measured: kill -> the first
  re-run completed on the other worker, kill -> all completed by it.

``RUNS`` kills per broker; the figures are the median and the worst. Prints a table and
writes ``bench/results/recovery.json``. Redis DB and RabbitMQ virtual host are private to
the run (``BENCH_REDIS_URL``, default DB 10; a vhost of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
os.environ.setdefault("STOCKAPP_TEST_REDIS_URL", REDIS_URL)
os.environ.setdefault("STOCKAPP_TEST_CONTROL_URL", REDIS_URL)
sys.path.insert(0, str(ROOT.parent / "tests" / "stockapp"))

from stockapp_harness import (  # noqa: E402
    StockBroker,
    Workers,
    connection,
    load_app,
    rabbitmq_broker,
    redis_broker,
)

from tide_celery.layout import LEASE_INTERVAL, LEASE_TTL  # noqa: E402
from tide_celery.recovery import recover, recover_when_lapsed  # noqa: E402

HELD = 8
RUNS = int(os.environ.get("BENCH_RECOVERY_RUNS", "5"))
QUEUE = "orders"


def _until(probe: Any, *, timeout: float, what: str, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def _waiting(broker: StockBroker) -> int:
    if broker.is_redis:
        return int(broker.client().llen(broker.keyprefix + QUEUE))
    with connection(broker) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=QUEUE, passive=True).message_count)
        finally:
            channel.close()


def _held(broker: StockBroker) -> bool:
    if broker.is_redis:
        return int(broker.client().hlen(broker.keyprefix + "unacked")) == HELD
    return _waiting(broker) == 0


def one_kill(broker: StockBroker, folder: Path) -> dict[str, float]:
    workers = Workers(folder=folder)
    try:
        # Published in this process (a fresh copy of the stock app on this corner): a
        # producer subprocess pays an interpreter start, slow on a loaded machine.
        app = load_app(broker.env())
        for _ in range(HELD):
            app.tasks["stockapp.tasks.hold"].apply_async(args=[broker.run], queue=QUEUE)
        app.close()
        victim = workers.start(broker, queues=[QUEUE], concurrency=2, acks_late=True)
        _until(
            lambda: broker.running() == 2 and _waiting(broker) == 0 and _held(broker),
            timeout=60,
            what="the victim holding every message",
        )
        # The other worker, idle until the messages come back (nothing waits now).
        other = workers.start(broker, queues=[QUEUE], concurrency=2, acks_late=True)
        _until(lambda: "ready." in other.tail(), timeout=60, what="the other worker ready")
        os.killpg(victim.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.process.wait(10)
        # The killed pool processes are gone: every token released from now on ends a run
        # of the other worker, so the first one done is the first re-run that completed.
        # Twice as many as needed: a token Redis hands to a killed process's BLPOP before it
        # sees the socket closed is lost with it (one run in five stalled that way).
        broker.release(2 * HELD)
        figures: dict[str, float] = {}
        if broker.is_redis:
            node = victim.name.replace("%h", os.uname().nodename)
            result = asyncio.run(
                recover_when_lapsed(
                    lambda: recover(broker.url, node, transport_options=broker.transport_options)
                )
            )
            assert result is not None
            assert result.total == HELD, result
            figures["back_seconds"] = time.monotonic() - killed
        first = _until(lambda: broker.done() >= 1, timeout=120, what="a re-run completed")
        figures["first_completed_seconds"] = first - killed
        done = _until(
            lambda: broker.done() >= HELD, timeout=120, what="the tasks completed elsewhere"
        )
        figures["completed_seconds"] = done - killed
        return figures
    finally:
        broker.release(10 * HELD)
        workers.stop_all()


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": runs}
    for key in ("back_seconds", "first_completed_seconds", "completed_seconds"):
        values = [run[key] for run in runs if key in run]
        if not values:
            continue
        result[key] = {
            "median": round(statistics.median(values), 3),
            "max": round(max(values), 3),
            "min": round(min(values), 3),
        }
    return result


def main() -> None:
    results: dict[str, Any] = {
        "held_messages": HELD,
        "runs_per_broker": RUNS,
        "lease_interval_seconds": LEASE_INTERVAL,
        "lease_ttl_seconds": LEASE_TTL,
        "visibility_timeout_seconds_without_recovery": 7200,
        "load_average_at_start": os.getloadavg()[0],
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    for name, make in (("redis", redis_broker), ("rabbitmq", rabbitmq_broker)):
        runs = []
        for index in range(RUNS):
            broker = make()
            try:
                with tempfile.TemporaryDirectory() as folder:
                    runs.append(one_kill(broker, Path(folder)))
            finally:
                broker.cleanup()
            print(f"{name} run {index + 1}: {runs[-1]}", flush=True)
        results[name] = summary(runs)

    print()
    print("seconds after the kill, median / max over the runs")
    print(f"{'broker':<10} {'back in queue':>18} {'first re-run done':>18} {'all completed':>18}")
    for name in ("redis", "rabbitmq"):
        cells = []
        for key in ("back_seconds", "first_completed_seconds", "completed_seconds"):
            figure = results[name].get(key)
            cells.append(f"{figure['median']:>7.2f} / {figure['max']:>6.2f}" if figure else "-")
        print(f"{name:<10} " + " ".join(f"{cell:>18}" for cell in cells))
    print("without recovery (Redis): the visibility timeout, 7,200 s with Tide's defaults")
    out = ROOT / "results" / "recovery.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved bench/results/{out.name}")


if __name__ == "__main__":
    main()
