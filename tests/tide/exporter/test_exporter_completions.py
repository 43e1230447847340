"""Per-queue completion counters: counted by real workers, read by the exporter, summed by
the operator's sources.

On Redis the workers count (``tide_celery``'s ``task_postrun`` handler) into a hash
under the run's ``global_keyprefix``; on RabbitMQ the management API's ``message_stats.ack``
is the count. The worker tests compare the counters with what the test knows it
published and how each task was told to end, and check that they stay there once the
queues are empty: "exactly N", not "at least N".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from celery import Celery, states
from celery.exceptions import Reject
from kombu import Exchange, Queue

from tide.exporter.readers import RedisQueueReader, acked
from tide.exporter.scrape import parse_exposition, scrape
from tide_celery.completions import leaves_queue, queue_of, routes_of
from tide_celery.layout import COMPLETED_KEY
from tide_operator.adapters.sources import ExporterSource

OUTCOME = "exporter_test.outcome"

# ----------------------------------------------------------------------------- pure parts

LEAVES_ROWS = [
    # A finished task's message is acknowledged: it left.
    pytest.param(states.SUCCESS, "result", True, id="success"),
    # Failures are acknowledged too (task_acks_on_failure_or_timeout, Celery's default).
    pytest.param(states.FAILURE, ValueError("x"), True, id="failure"),
    # A retry acknowledges the original; the retry is a new message, counted when it ends.
    pytest.param(states.RETRY, None, True, id="retry"),
    # Ignore (Tide's cancelled jobs) acknowledges without a result.
    pytest.param(states.IGNORED, None, True, id="ignored"),
    # Reject without requeue drops (or dead-letters) the message: it left.
    pytest.param(states.REJECTED, Reject("x", requeue=False), True, id="reject-drop"),
    # Reject with requeue puts it back in the queue: not gone, not counted.
    pytest.param(states.REJECTED, Reject("x", requeue=True), False, id="reject-requeue"),
]


@pytest.mark.parametrize(("state", "retval", "expected"), LEAVES_ROWS)
def test_which_outcomes_count(state: str, retval: Any, expected: bool) -> None:
    assert leaves_queue(state, retval) is expected


ROUTES = {("media", "media.video"): "video"}
QUEUE_OF_ROWS = [
    # Celery's usual delivery: exchange and routing key both named after the queue.
    pytest.param({"exchange": "io", "routing_key": "io"}, "io", id="same-name"),
    # A queue bound with another routing key is found through the declared bindings.
    pytest.param({"exchange": "media", "routing_key": "media.video"}, "video", id="bound"),
    # An unknown binding falls back to the routing key, as the unacked tracker does.
    pytest.param({"exchange": "other", "routing_key": "q"}, "q", id="fallback"),
    # The default exchange (published straight to a queue) has an empty name.
    pytest.param({"exchange": "", "routing_key": "q"}, "q", id="default-exchange"),
    # No delivery info: an eager call or a test's apply(), never a broker message.
    pytest.param(None, None, id="no-delivery"),
    pytest.param({"exchange": "x", "routing_key": None}, None, id="no-routing-key"),
]


@pytest.mark.parametrize(("info", "expected"), QUEUE_OF_ROWS)
def test_queue_of_a_delivery(info: dict[str, Any] | None, expected: str | None) -> None:
    assert queue_of(info, ROUTES) == expected


def test_routes_come_from_the_declared_queues() -> None:
    app = Celery("routes", broker="memory://", set_as_current=False)
    app.conf.task_queues = [
        Queue("video", Exchange("media", type="topic"), routing_key="media.video"),
        Queue("plain", Exchange("plain"), routing_key="plain"),
    ]
    assert routes_of(app) == {("media", "media.video"): "video", ("plain", "plain"): "plain"}


ACKED_ROWS = [
    # The management API's cumulative ack count.
    pytest.param({"name": "q", "message_stats": {"ack": 41}}, 41, id="acks"),
    # A queue with traffic but no ack yet has message_stats without "ack".
    pytest.param({"name": "q", "message_stats": {"publish": 3}}, 0, id="no-ack-yet"),
    # A queue that never saw traffic has no message_stats at all.
    pytest.param({"name": "q", "messages_ready": 0}, 0, id="no-stats"),
    # A queue not declared yet: the reader passes an empty mapping.
    pytest.param({}, 0, id="absent"),
    # Garbage is not a count.
    pytest.param({"message_stats": {"ack": "many"}}, 0, id="not-a-number"),
]


@pytest.mark.parametrize(("queue", "expected"), ACKED_ROWS)
def test_acked_from_management_payload(queue: dict[str, Any], expected: int) -> None:
    assert acked(queue) == expected


def test_exposition_counter_parses_back() -> None:
    text = (
        "# TYPE celery_queue_length gauge\n"
        'celery_queue_length{queue_name="a"} 2.0\n'
        'celery_queue_length{queue_name="b"} 0.0\n'
        "# TYPE celery_queue_completed counter\n"
        'celery_queue_completed_total{queue_name="a"} 17.0\n'
    )
    parsed = parse_exposition(text)
    # The sample keeps "_total" although the parser names the family without it.
    assert parsed["a"].completed == 17
    # No sample for b (a source without a count): None, not 0.
    assert parsed["b"].completed is None


# ------------------------------------------------------------------------- real workers


def counters(broker: Any) -> dict[str, int]:
    raw = broker.client.hgetall(broker.keyprefix + COMPLETED_KEY)
    return {key.decode(): int(value) for key, value in raw.items()}


def test_workers_count_every_finished_message_exactly(
    redis_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    first, second = f"done-a-{redis_broker.run}", f"done-b-{redis_broker.run}"
    never = f"done-never-{redis_broker.run}"
    app = redis_broker.make_app()
    outcome = app.tasks[OUTCOME]
    plan = {
        # 3 + 2 + 1, and each retry is two runs whose messages both leave: 10.
        first: ["ok"] * 3 + ["fail"] * 2 + ["ignore"] + ["retry"] * 2,
        # The requeued run does not count, its redelivery does: 4.
        second: ["ok"] * 2 + ["requeue"] * 2,
    }
    expected = {first: 10, second: 4}
    for queue, hows in plan.items():
        for how in hows:
            outcome.apply_async(args=[redis_broker.run, how], queue=queue)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(first, second, never),
    )
    # Before any worker: nothing keeps a count for these queues yet, so none is shown
    # (absent, not a false 0).
    assert {q: s.completed for q, s in scrape(exporter.url).items()} == {
        first: None,
        second: None,
        never: None,
    }

    worker = start_worker(
        broker_url=redis_broker.url,
        keyprefix=redis_broker.keyprefix,
        queues=[first, second],
        concurrency=2,
        release=redis_broker.release,
    )
    wait(
        lambda: counters(redis_broker) == expected,
        timeout=60,
        what=f"counters {expected}",
        explain=lambda: f"{counters(redis_broker)}\n{worker.tail()}",
    )

    # Exactly, not at least: once nothing waits or runs, nothing more is counted.
    reader = RedisQueueReader(
        url=redis_broker.url, transport_options=redis_broker.transport_options()
    )

    def drained() -> bool:
        return all(
            (s.waiting, s.inflight, s.scheduled) == (0, 0, 0)
            for s in reader.read([first, second], now=time.time())
        )

    wait(drained, timeout=30, what="queues drained")
    reader.close()
    assert counters(redis_broker) == expected
    # The hash honours the run's global_keyprefix: nothing was written outside it.
    assert not redis_broker.client.exists(COMPLETED_KEY)

    # The exporter publishes the counts, and the operator's source sums the pool's queues.
    wait(
        lambda: (
            {q: s.completed for q, s in scrape(exporter.url).items()} == {**expected, never: None}
        ),
        timeout=10,
        what="exported counters",
    )
    text = httpx.get(exporter.url + "/metrics").text
    assert "# TYPE celery_queue_completed_total counter" in text

    async def observe() -> Any:
        async with httpx.AsyncClient() as client:
            source = ExporterSource(exporter.url, client=client)
            return await source.observe([first, second, never], now=1.0)

    observation = asyncio.run(observe())
    assert observation.completed_total == 14
    assert (observation.waiting, observation.inflight) == (0, 0)


def test_reader_without_counters_reports_none(redis_broker: Any) -> None:
    queue = f"nocount-{redis_broker.run}"
    redis_broker.client.hset(redis_broker.keyprefix + COMPLETED_KEY, queue, 5)
    counting = RedisQueueReader(
        url=redis_broker.url, transport_options=redis_broker.transport_options()
    )
    silent = RedisQueueReader(
        url=redis_broker.url, transport_options=redis_broker.transport_options(), completions=False
    )
    try:
        assert counting.read([queue], now=time.time())[0].completed == 5
        assert silent.read([queue], now=time.time())[0].completed is None
    finally:
        counting.close()
        silent.close()


def test_rabbitmq_acks_are_the_count(
    rabbit_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue, never = rabbit_broker.queue("done"), rabbit_broker.queue("done-never")
    app = rabbit_broker.make_app()
    hows = ["ok"] * 4 + ["fail"] * 2 + ["retry"]
    for how in hows:
        app.tasks[OUTCOME].apply_async(args=[rabbit_broker.run, how], queue=queue)
    exporter = exporter_factory(
        broker_url=rabbit_broker.url,
        management_url=rabbit_broker.management_url,
        queues=(queue, never),
    )
    assert scrape(exporter.url)[queue].completed == 0
    worker = start_worker(
        broker_url=rabbit_broker.url, queues=[queue], concurrency=2, release=rabbit_broker.release
    )

    def completed() -> dict[str, int | None]:
        # Only this test's queues: the exporter also discovers the vhost's other queues.
        figures = scrape(exporter.url)
        return {q: figures[q].completed for q in (queue, never)}

    # Every run acknowledges its message, the retry's original included: 4 + 2 + 2.
    # The management statistics refresh every 5 s, hence the longer deadline.
    wait(
        lambda: completed() == {queue: 8, never: 0},
        timeout=60,
        what="8 acks",
        explain=lambda: f"{completed()}\n{worker.tail()}",
    )
    assert scrape(exporter.url)[queue].source == "rabbitmq-management"
