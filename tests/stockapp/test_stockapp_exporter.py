"""The stock app through Tide's exporter: every figure against the truth.

The stock app is the team's own (kombu's default transport options, early acks, prefetch
4, three queues, priorities); its workers are real ``celery -A stockapp worker`` processes
and its producers real processes of the app. The truth comes from elsewhere than the
exporter: what the test published, what the held tasks report (``running``), and what the
workers themselves answer to ``inspect active`` / ``inspect reserved``.

What each figure needs (docs/exporter.md, "What each series needs"): waiting and in-flight
of unacknowledged messages come from the broker alone; running tasks under early acks,
completions on Redis and the publish stamp come from the integration's one line. Without
it, those series are absent, never a false 0.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from kombu import Connection
from stockapp_harness import QUEUES, StockBroker, Workers, inspect, ping, produce

from tide.exporter.scrape import scrape
from tide.exporter.stats import QueueStats
from tide_celery.layout import WORKERS_KEY

HOLD = "stockapp.tasks.hold"


def stats_of(exporter: Any) -> dict[str, QueueStats]:
    figures = scrape(exporter.url)
    return {queue: figures[queue] for queue in QUEUES}


def delivered(broker: StockBroker) -> tuple[int, int]:
    """(running, reserved) tasks, as the stock workers themselves answer."""
    control = inspect(broker)
    active = control.active() or {}
    reserved = control.reserved() or {}
    return (
        sum(len(tasks) for tasks in active.values()),
        sum(len(tasks) for tasks in reserved.values()),
    )


def kombu_size(broker: StockBroker, queue: str) -> int:
    with Connection(broker.url, transport_options=broker.transport_options) as connection:
        return int(connection.default_channel._size(queue))


@pytest.mark.broker
def test_waiting_with_priorities_is_exact(
    stock_broker: StockBroker, stock_exporter: Callable[..., Any], wait: Callable[..., Any]
) -> None:
    produce(
        stock_broker,
        [
            *[("stockapp.tasks.place_order", [n], {}) for n in range(5)],
            *[("stockapp.tasks.send_email", [f"{n}@x"], {"priority": 5}) for n in range(4)],
            *[("stockapp.tasks.send_email", [f"{n}@y"], {"priority": 0}) for n in range(2)],
            *[("stockapp.tasks.build_report", [stock_broker.run], {"priority": 9})] * 3,
        ],
    )
    exporter = stock_exporter(stock_broker)
    expected = {"orders": 5, "emails": 6, "reports": 3}

    def waiting() -> dict[str, int]:
        # Counted only once the age is there too: RabbitMQ's statistics refresh their
        # parts apart, and every message carries the integration's stamp.
        return {
            queue: stats.waiting
            for queue, stats in stats_of(exporter).items()
            if stats.oldest_age is not None
        }

    # RabbitMQ's management statistics refresh every 5 s, hence the deadline.
    wait(
        lambda: waiting() == expected,
        timeout=30,
        what=f"waiting {expected}",
        explain=lambda: str(stats_of(exporter)),
    )
    figures = stats_of(exporter)
    for queue, stats in figures.items():
        assert stats.inflight == 0, queue
        # Every message carries the integration's stamp: the oldest one's age is known.
        assert stats.oldest_age is not None, queue
        assert stats.oldest_age >= 0, queue
        # No worker with the integration has run anything: nobody counts running tasks.
        assert stats.running is None, queue
    if stock_broker.is_redis:
        # kombu's own count agrees, priority lists and all.
        assert {queue: kombu_size(stock_broker, queue) for queue in QUEUES} == expected
        assert {queue: s.completed for queue, s in figures.items()} == dict.fromkeys(QUEUES)
    else:
        # RabbitMQ counts acknowledgements itself.
        assert {queue: s.completed for queue, s in figures.items()} == dict.fromkeys(QUEUES, 0)


@pytest.mark.parametrize("integration", [True, False], ids=["with-integration", "without"])
def test_early_acks_in_flight_includes_running_tasks(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
    integration: bool,
) -> None:
    broker = redis_stock_broker
    produce(broker, [(HOLD, [broker.run], {"queue": "orders"})] * 12, integration=integration)
    exporter = stock_exporter(broker)
    worker = stock_workers.start(broker, concurrency=2, integration=integration)
    wait(lambda: broker.running() == 2, timeout=60, what="two tasks running", explain=worker.tail)
    # Early acks: the two running tasks are acknowledged, so prefetch (4 x 2) takes 8 more.
    wait(lambda: delivered(broker) == (2, 8), timeout=30, what="2 running, 8 reserved")
    truth = {"waiting": 2, "inflight": 10, "running": 2}

    def orders() -> dict[str, Any]:
        stats = stats_of(exporter)["orders"]
        return {"waiting": stats.waiting, "inflight": stats.inflight, "running": stats.running}

    if integration:
        wait(lambda: orders() == truth, timeout=30, what=f"exporter reads {truth}")
        # A heartbeat later (it drops tasks the worker no longer holds) the running
        # tasks still count: the worker holds them.
        client, key = broker.client(), broker.keyprefix + WORKERS_KEY
        [(node, score)] = client.zrange(key, 0, -1, withscores=True)
        wait(lambda: (client.zscore(key, node) or 0) > score, timeout=15, what="a heartbeat")
        assert orders() == truth
    else:
        # The broker alone sees the 8 unacknowledged messages, not the 2 running tasks;
        # running and completions are absent rather than 0.
        blind = {"waiting": 2, "inflight": 8, "running": None}
        wait(lambda: orders() == blind, timeout=30, what=f"exporter reads {blind}")
        stats = stats_of(exporter)
        assert {queue: s.completed for queue, s in stats.items()} == dict.fromkeys(QUEUES)
        # A producer without the integration stamps nothing: waiting messages, no age.
        assert stats["orders"].oldest_age is None
    broker.release(12)
    done = 12 if integration else None
    wait(
        lambda: (
            (lambda s: (s.waiting, s.inflight, s.completed))(stats_of(exporter)["orders"])
            == (0, 0, done)
        ),
        timeout=60,
        what=f"all done, completed {done}",
        explain=worker.tail,
    )


def test_late_acks_running_tasks_count_once(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    broker = redis_stock_broker
    produce(broker, [(HOLD, [broker.run], {"queue": "reports"})] * 12)
    exporter = stock_exporter(broker)
    worker = stock_workers.start(broker, concurrency=2, acks_late=True)
    wait(lambda: broker.running() == 2, timeout=60, what="two tasks running", explain=worker.tail)
    # Late acks: the running tasks stay unacknowledged, within prefetch's 8.
    wait(lambda: delivered(broker) == (2, 6), timeout=30, what="2 running, 6 reserved")
    truth = (4, 8, 2)  # waiting, in flight (running counted once), running
    wait(
        lambda: (
            (lambda s: (s.waiting, s.inflight, s.running))(stats_of(exporter)["reports"]) == truth
        ),
        timeout=30,
        what=f"exporter reads {truth}",
    )


@pytest.mark.broker
def test_completions_are_counted_per_queue(
    stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    produce(
        stock_broker,
        [
            *[("stockapp.tasks.place_order", [n], {}) for n in range(3)],
            *[("stockapp.tasks.send_email", [f"{n}@x"], {"priority": 5}) for n in range(2)],
        ],
    )
    exporter = stock_exporter(stock_broker)
    worker = stock_workers.start(stock_broker, concurrency=2)
    expected = {"orders": 3, "emails": 2, "reports": 0}
    # Completions and an empty queue, read together (RabbitMQ's statistics refresh their
    # parts at different moments, so neither is asserted alone after the other).
    expected_read = {queue: (0, done) for queue, done in expected.items()}
    wait(
        lambda: (
            {q: (s.waiting, s.completed) for q, s in stats_of(exporter).items()} == expected_read
        ),
        timeout=60,
        what=f"waiting 0 and completed {expected}",
        explain=lambda: f"{stats_of(exporter)}\n{worker.tail()}",
    )


def test_workers_are_named_for_the_operator(
    redis_stock_broker: StockBroker, stock_workers: Workers, wait: Callable[..., Any]
) -> None:
    broker = redis_stock_broker
    host = socket.gethostname()
    named = stock_workers.start(broker, name="", queues=["orders"], concurrency=1)

    # No -n on the command line: the integration names it worker@<host>, the name the
    # operator's idle-first probe addresses.
    wait(lambda: ping(broker) == {f"worker@{host}"}, timeout=60, explain=named.tail)
    live = redis.Redis.from_url(broker.url).zrange(broker.keyprefix + WORKERS_KEY, 0, -1)
    assert [node.decode() for node in live] == [f"worker@{host}"]
    stock_workers.stop(named)
    # Deregistered on a clean stop.
    assert not redis.Redis.from_url(broker.url).zcard(broker.keyprefix + WORKERS_KEY)
    # Without the integration the worker keeps Celery's own default name.
    plain = stock_workers.start(
        broker, name="", queues=["orders"], concurrency=1, integration=False
    )
    wait(lambda: ping(broker) == {f"celery@{host}"}, timeout=60, explain=plain.tail)


def test_a_pool_process_lost_mid_task_leaves_no_phantom(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    broker = redis_stock_broker
    produce(broker, [(HOLD, [broker.run], {"queue": "emails"})])
    exporter = stock_exporter(broker)
    worker = stock_workers.start(broker, concurrency=1, queues=["emails"])
    wait(lambda: stats_of(exporter)["emails"].running == 1, timeout=60, explain=worker.tail)
    [tasks] = (inspect(broker).active() or {}).values()
    os.kill(int(tasks[0]["worker_pid"]), signal.SIGKILL)
    # The pool process never ran task_postrun; the worker's heartbeat (every 5 s) drops
    # the task it no longer holds.
    started = time.monotonic()
    wait(
        lambda: stats_of(exporter)["emails"].running == 0,
        timeout=20,
        what="phantom dropped",
        explain=worker.tail,
    )
    assert time.monotonic() - started < 12
    assert delivered(broker) == (0, 0)
    assert stats_of(exporter)["emails"].inflight == 0


def test_a_lost_worker_stops_counting_within_the_ttl(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    broker = redis_stock_broker
    produce(broker, [(HOLD, [broker.run], {"queue": "orders"})] * 2)
    exporter = stock_exporter(broker)
    worker = stock_workers.start(broker, concurrency=2, queues=["orders"])
    wait(lambda: stats_of(exporter)["orders"].running == 2, timeout=60, explain=worker.tail)
    stock_workers.kill(worker)
    killed = time.monotonic()
    # Early acks: the two tasks are lost with the node. Their count lasts until the
    # worker's registration expires: at most 15 s (three heartbeats) after the last beat.
    wait(
        lambda: stats_of(exporter)["orders"].inflight == 0,
        timeout=30,
        what="lost worker's tasks no longer counted",
    )
    assert time.monotonic() - killed <= 16
    assert not redis.Redis.from_url(broker.url).zcount(
        broker.keyprefix + WORKERS_KEY, time.time(), "+inf"
    )
