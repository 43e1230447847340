"""The RabbitMQ reader against the real RabbitMQ (vhost ``/``), with real Celery workers.

Queue names carry the test's run id and are deleted after. The management API's figures
are statistics RabbitMQ refreshes every few seconds, so tests wait (with a deadline) for
them to equal the known counts; AMQP passive declares are immediate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tide.exporter.readers import RabbitMQReader
from tide.exporter.scrape import scrape

HOLD = "exporter_test.hold"


def figures(exporter: Any, queue: str) -> tuple[int, int | None, int | None]:
    stats = scrape(exporter.url)[queue]
    return (stats.waiting, stats.inflight, stats.scheduled)


def test_waiting_with_priorities_and_oldest_age(
    rabbit_broker: Any, exporter_factory: Callable[..., Any], wait: Callable[..., Any]
) -> None:
    queue = rabbit_broker.queue("prio")
    never = rabbit_broker.queue("never")
    app = rabbit_broker.make_app()
    started = time.time()
    for priority in [0, 3, 9, None, None, 7]:
        options = {} if priority is None else {"priority": priority}
        app.tasks[HOLD].apply_async(args=[rabbit_broker.run], queue=queue, **options)

    # Over AMQP only: ready messages are exact; in-flight is unknown. Publishes without
    # confirms are asynchronous, so wait for the broker to have enqueued all six.
    amqp = RabbitMQReader(url=rabbit_broker.url)

    def over_amqp() -> dict[str, Any]:
        return {s.name: s for s in amqp.read([queue, never], now=time.time())}

    wait(lambda: over_amqp()[queue].waiting == 6, timeout=20, what="six ready over AMQP")
    by_name = over_amqp()
    amqp.close()
    assert (by_name[queue].waiting, by_name[queue].inflight) == (6, None)
    assert (by_name[never].waiting, by_name[never].oldest_age) == (0, 0.0)

    exporter = exporter_factory(
        broker_url=rabbit_broker.url,
        management_url=rabbit_broker.management_url,
        queues=(queue, never),
    )
    wait(lambda: figures(exporter, queue) == (6, 0, None), timeout=30, what="management figures")
    # The management API refreshes its statistics every few seconds, and the head message's
    # timestamp can land in a later refresh than the counts: wait for it, then check it.
    wait(
        lambda: scrape(exporter.url)[queue].oldest_age is not None,
        timeout=30,
        what="the head message's age",
    )
    stats = scrape(exporter.url)
    assert stats[queue].source == "rabbitmq-management"
    # head_message_timestamp is whole seconds: allow the truncation.
    age = stats[queue].oldest_age
    assert age is not None
    assert age <= time.time() - started + 1.0
    assert figures(exporter, never) == (0, 0, None)


def test_prefetched_and_running_tasks_are_inflight(
    rabbit_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue = rabbit_broker.queue("busy")
    app = rabbit_broker.make_app(prefetch=2)
    for index in range(9):
        app.tasks[HOLD].apply_async(args=[rabbit_broker.run], queue=queue, priority=index)
    exporter = exporter_factory(
        broker_url=rabbit_broker.url,
        management_url=rabbit_broker.management_url,
        queues=(queue,),
    )
    worker = start_worker(
        broker_url=rabbit_broker.url,
        queues=[queue],
        concurrency=2,
        prefetch=2,
        release=rabbit_broker.release,
    )
    wait(lambda: rabbit_broker.running() == 2, timeout=60, what=worker.tail)
    # 2 running + 2 prefetched (prefetch count 4) delivered; 5 ready.
    wait(lambda: figures(exporter, queue) == (5, 4, None), timeout=30, what="management figures")
    rabbit_broker.release(100)
    wait(lambda: figures(exporter, queue) == (0, 0, None), timeout=40, what="all done")


def test_oldest_age_counts_waiting_messages_only(
    rabbit_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    # A worker holds two ETA tasks ten minutes out (delivered, unacknowledged, not running)
    # and runs a third; a fourth waits. RabbitMQ's head timestamp is the held tasks': the
    # exporter must give the waiting message's age or none, never the held ones'.
    queue = rabbit_broker.queue("eta")
    app = rabbit_broker.make_app()
    held_since = time.time()
    for _ in range(2):
        app.tasks[HOLD].apply_async(args=[rabbit_broker.run], queue=queue, countdown=600)
    exporter = exporter_factory(
        broker_url=rabbit_broker.url,
        management_url=rabbit_broker.management_url,
        queues=(queue,),
    )
    worker = start_worker(
        broker_url=rabbit_broker.url, queues=[queue], release=rabbit_broker.release
    )
    wait(lambda: figures(exporter, queue) == (0, 2, None), timeout=60, what=worker.tail)
    app.tasks[HOLD].apply_async(args=[rabbit_broker.run], queue=queue)
    wait(lambda: rabbit_broker.running() == 1, timeout=60, what=worker.tail)
    waiting_since = time.time()
    app.tasks[HOLD].apply_async(args=[rabbit_broker.run], queue=queue)
    # One slot, busy: the fourth waits (prefetch 1, plus one per ETA task held).
    wait(lambda: figures(exporter, queue) == (1, 3, None), timeout=30, what="one waiting")
    # The statistics refresh in parts: read the age a few times over two refreshes.
    ages = []
    deadline = time.monotonic() + 11
    while time.monotonic() < deadline:
        ages.append((scrape(exporter.url)[queue].oldest_age, time.time()))
        time.sleep(0.5)
    # The held tasks are older than the waiting one by more than the stamps' whole seconds.
    assert waiting_since - held_since > 2
    for age, at in ages:
        assert age is None or age <= at - waiting_since + 1.0, (age, at - held_since)
