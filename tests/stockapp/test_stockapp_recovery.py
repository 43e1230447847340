"""Dead-worker recovery with the stock app on real Redis (``tide_celery.recovery``).

A real ``celery -A stockapp worker`` holds ``hold`` tasks (two running, the rest
prefetched: Celery's default prefetch multiplier of 4 with ``-c 2``), its main process is
SIGKILLed as an OOM kill does, and recovery is run as the operator or local mode runs it.
Every assertion is on state (the broker's lists and ``unacked`` hash, the integration's
keys, the tasks' own completion count), each reached within a deadline, never after a sleep.

What each test proves:

* early acks (Celery's default): the prefetched messages are back in the queue within the
  lease's TTL of the kill, and another worker completes them; the two that were running
  had been acknowledged at start, so they are gone (Celery's at-most-once for early acks);
* late acks: every held message is back, the running ones included;
* a slow but alive worker (lease renewed) is not recovered: nothing moves, it finishes
  its own tasks, each runs once;
* a frozen worker whose lease lapsed is recovered, and when it resumes its
  acknowledgements of the restored tags are harmless: the broker ends empty and consistent;
* a worker restarted under the same node name (a container restart in its pod) puts back
  what the killed run held without anyone calling recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection
from stockapp_harness import StockBroker, Worker, Workers, produce

from tide.exporter.scrape import scrape
from tide_celery.layout import (
    HEARTBEAT_INTERVAL,
    LEASE_TTL,
    RECOVERED_KEY,
    REDELIVERED_KEY,
    WORKERS_KEY,
    held_key,
)
from tide_celery.recovery import Recovered, recover, recover_when_lapsed
from tide_celery.redeliveries import Redelivery, parse

QUEUE = "orders"
HELD = 8  # -c 2 and prefetch multiplier 4: two running, six reserved


def _unacked(broker: StockBroker) -> int:
    return int(broker.client().hlen(broker.keyprefix + "unacked"))


def _waiting(broker: StockBroker) -> int:
    return int(broker.client().llen(broker.keyprefix + QUEUE))


def _recovered(broker: StockBroker) -> int:
    return int(broker.client().hget(broker.keyprefix + RECOVERED_KEY, QUEUE) or 0)


def _record(broker: StockBroker, node: str) -> dict[str, Any]:
    raw = broker.client().hgetall(broker.keyprefix + held_key(node))
    return {tag.decode(): json.loads(value) for tag, value in raw.items()}


def _notices(broker: StockBroker) -> list[Redelivery]:
    raw = broker.client().lrange(broker.keyprefix + REDELIVERED_KEY, 0, -1)
    return [notice for notice in map(parse, raw) if notice is not None]


def _node(worker: Worker) -> str:
    return worker.name.replace("%h", os.uname().nodename)


def _start_holding(
    broker: StockBroker,
    workers: Workers,
    wait: Callable[..., Any],
    *,
    acks_late: bool,
    name: str | None = None,
) -> Worker:
    produce(broker, [("stockapp.tasks.hold", [broker.run], {"queue": QUEUE})] * HELD)
    worker = workers.start(broker, queues=[QUEUE], concurrency=2, acks_late=acks_late, name=name)
    unacked = HELD if acks_late else HELD - 2
    wait(
        lambda: broker.running() == 2 and _waiting(broker) == 0 and _unacked(broker) == unacked,
        timeout=60,
        what=f"two held tasks running and {unacked} messages unacknowledged",
        explain=worker.tail,
    )
    # Every delivery the worker got is in its record (the two running ones too).
    wait(lambda: len(_record(broker, _node(worker))) >= unacked, timeout=10, what="the record")
    return worker


def _kill_main(worker: Worker) -> float:
    """SIGKILL the worker's main process only (its pool processes are orphaned)."""
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)
    return time.monotonic()


def _kill_orphans(worker: Worker) -> None:
    # The orphaned pool processes still hold their running tasks; end them so that only
    # the recovered messages are left to run (a pod's container takes them all with it).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)


def _recover(broker: StockBroker, node: str) -> Recovered | None:
    return asyncio.run(
        recover_when_lapsed(
            lambda: recover(broker.url, node, transport_options=broker.transport_options),
            give_up_after=30,
        )
    )


@pytest.mark.parametrize(
    ("acks_late", "back"),
    [
        # Early acks: the two running tasks were acknowledged at start; six come back.
        (False, HELD - 2),
        # Late acks: all eight were unacknowledged, the running two included.
        (True, HELD),
    ],
)
def test_a_killed_workers_messages_are_back_and_run_elsewhere(
    redis_stock_broker: StockBroker,
    stock_workers: Workers,
    stock_exporter: Callable[..., Any],
    wait: Callable[..., Any],
    acks_late: bool,
    back: int,
) -> None:
    broker = redis_stock_broker
    exporter = stock_exporter(broker)
    worker = _start_holding(broker, stock_workers, wait, acks_late=acks_late)
    node = _node(worker)
    before_kill = time.time()
    killed = _kill_main(worker)

    result = _recover(broker, node)
    elapsed = time.monotonic() - killed
    assert result is not None
    assert result.restored == {QUEUE: back}
    assert result.complete
    # Back once the lease lapsed (LEASE_TTL after the last renewal; the rest is slack for a
    # loaded machine), not after the visibility timeout (an hour for the stock app).
    assert elapsed < LEASE_TTL + 20, elapsed
    assert _waiting(broker) == back
    assert _unacked(broker) == 0
    assert _recovered(broker) == back
    assert _record(broker, node) == {}
    # One notice per message put back, for the app's own records (tide_celery.redeliveries).
    notices = _notices(broker)
    assert sorted(n.task_id for n in notices) == sorted(result.task_ids)
    assert {(n.node, n.queue) for n in notices} == {(node, QUEUE)}
    assert all(before_kill <= n.at <= time.time() for n in notices)
    # Exported per queue by Tide's exporter, beside the completions.
    wait(
        lambda: scrape(exporter.url)[QUEUE].recovered == back,
        timeout=10,
        what="celery_queue_recovered_total",
    )

    _kill_orphans(worker)
    other = stock_workers.start(broker, queues=[QUEUE], concurrency=2, acks_late=acks_late)
    # Only the other worker runs tasks now: each token released ends one of them.
    broker.release(back)
    wait(
        lambda: broker.done() == back and _waiting(broker) == 0 and _unacked(broker) == 0,
        timeout=60,
        what="every recovered task completed by the other worker",
        explain=other.tail,
    )
    # The stock app connects no receiver: its workers leave the notices to someone who does.
    assert len(_notices(broker)) == back


def test_a_slow_but_alive_worker_is_not_recovered(
    redis_stock_broker: StockBroker, stock_workers: Workers, wait: Callable[..., Any]
) -> None:
    broker = redis_stock_broker
    worker = _start_holding(broker, stock_workers, wait, acks_late=True)
    node = _node(worker)

    # Reported dead by mistake (or partitioned from the API server): its lease is live.
    result = recover(broker.url, node, transport_options=broker.transport_options)
    assert result is not None
    assert result.restored == {}
    assert result.leased >= HELD
    assert 0 < result.lease_remaining <= LEASE_TTL
    assert _unacked(broker) == HELD
    assert _waiting(broker) == 0

    broker.release(HELD)
    wait(
        lambda: broker.done() == HELD and _unacked(broker) == 0,
        timeout=60,
        what="the worker finishing its own tasks",
        explain=worker.tail,
    )
    # Each ran once: nothing was redelivered, nothing counted as recovered.
    assert broker.done() == HELD
    assert _waiting(broker) == 0
    assert _recovered(broker) == 0


def test_a_live_workers_eta_message_outlives_a_short_visibility_timeout(
    redis_stock_broker: StockBroker, stock_workers: Workers, wait: Callable[..., Any]
) -> None:
    # kombu's sweep puts back every unacknowledged message older than the visibility
    # timeout, even one a live worker holds: an ETA further ahead than the timeout would
    # be delivered again and run twice (Celery's documented caveat). The integration marks
    # what its worker holds as seen at every heartbeat, so the sweep of a consumer with a
    # timeout of two heartbeats leaves a 10-minute countdown alone.
    broker = redis_stock_broker
    worker = stock_workers.start(broker, queues=[QUEUE], concurrency=1)
    produce(broker, [("stockapp.tasks.hold", [broker.run], {"queue": QUEUE, "countdown": 600})])
    node = _node(worker)
    wait(
        lambda: _unacked(broker) == 1 and len(_record(broker, node)) == 1,
        timeout=60,
        what="the worker holding the ETA message",
        explain=worker.tail,
    )
    index = broker.keyprefix + "unacked_index"
    ((tag, delivered),) = broker.client().zrange(index, 0, -1, withscores=True)
    visibility = 2 * HEARTBEAT_INTERVAL
    # The scenario is time passing: held for longer than that timeout (and a heartbeat).
    wait(
        lambda: time.time() > delivered + visibility + HEARTBEAT_INTERVAL,
        timeout=60,
        interval=0.5,
        what="the message held longer than the visibility timeout",
    )
    seen = broker.client().zscore(index, tag)
    assert seen is not None
    assert seen > time.time() - visibility, (delivered, seen)
    options = {**broker.transport_options, "visibility_timeout": visibility}
    with Connection(broker.url, transport_options=options) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)
    assert _unacked(broker) == 1
    assert _waiting(broker) == 0
    assert broker.client().zscore(index, tag) == seen


def test_a_frozen_worker_recovered_then_resumed_acks_harmlessly(
    redis_stock_broker: StockBroker, stock_workers: Workers, wait: Callable[..., Any]
) -> None:
    broker = redis_stock_broker
    worker = _start_holding(broker, stock_workers, wait, acks_late=True)
    node = _node(worker)
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        result = _recover(broker, node)
        assert result is not None
        assert result.restored == {QUEUE: HELD}
        assert _waiting(broker) == HELD
        assert _unacked(broker) == 0
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)
    # It comes back: it runs what it held, acknowledges tags that are gone, and takes the
    # restored copies again. Every message ends acknowledged; some tasks ran twice
    # (at-least-once), none ran zero times.
    broker.release(10 * HELD)
    wait(
        lambda: _waiting(broker) == 0 and _unacked(broker) == 0 and broker.running() == 0,
        timeout=90,
        what="the broker empty and consistent after the worker resumed",
        explain=worker.tail,
    )
    assert HELD <= broker.done() <= 2 * HELD


def test_a_restarted_worker_puts_back_what_its_killed_run_held(
    redis_stock_broker: StockBroker, stock_workers: Workers, wait: Callable[..., Any]
) -> None:
    broker = redis_stock_broker
    name = f"stock-restart-{broker.run}@%h"
    worker = _start_holding(broker, stock_workers, wait, acks_late=True, name=name)
    node = _node(worker)
    os.killpg(worker.process.pid, signal.SIGKILL)  # the container, pool processes included
    worker.process.wait(10)
    assert _unacked(broker) == HELD

    # The same node name again, as a container restarted in its pod gets: nobody calls
    # recovery; the new run finds its predecessor's holdings and puts them back once the
    # predecessor's lease has lapsed, then runs them.
    client = broker.client()
    registered = client.zscore(broker.keyprefix + WORKERS_KEY, node) or 0.0
    restarted = stock_workers.start(
        broker, queues=[QUEUE], concurrency=2, acks_late=True, name=name
    )
    wait(
        lambda: (client.zscore(broker.keyprefix + WORKERS_KEY, node) or 0.0) > registered,
        timeout=60,
        what="the new run registered",
        explain=restarted.tail,
    )
    # It looks at once, and at each heartbeat until the predecessor's lease has lapsed.
    wait(
        lambda: _recovered(broker) == HELD,
        timeout=LEASE_TTL + HEARTBEAT_INTERVAL + 20,
        what="the predecessor's messages recovered by the new run",
        explain=restarted.tail,
    )
    broker.release(10 * HELD)
    wait(
        lambda: broker.done() == HELD and _unacked(broker) == 0 and _waiting(broker) == 0,
        timeout=60,
        what="the recovered tasks completed by the restarted worker",
        explain=restarted.tail,
    )
    assert all(entry[0] != "" for entry in _record(broker, node).values())
