"""The in-flight tracker: pure bucket arithmetic, payload decoding, and exactness under
churn against the real Redis (through kombu's own Redis QoS, not hand-written entries)."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer, Queue

from tide.exporter.readers import RedisQueueReader
from tide.exporter.stats import (
    UnackedEntry,
    count_unacked,
    oldest_age,
    parse_timestamp,
    parse_unacked,
    published_at,
)
from tide.exporter.unacked import normalize, split_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000.5, 1700000000.5),  # Tide's published_at: epoch float
        ("2024-01-01T00:00:00+00:00", 1704067200.0),  # Celery's eta: ISO with offset
        ("2024-01-01T00:00:00", 1704067200.0),  # naive ISO: read as UTC
        ("1700000000", 1700000000.0),  # a number sent as a string
        (None, None),  # absent
        (True, None),  # a bool is not a time
        ("soon", None),  # garbage gives no time rather than an error
    ],
)
def test_parse_timestamp(value: Any, expected: float | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(
    ("stamps", "waiting", "expected"),
    [
        ([], 0, 0.0),  # nothing waits: age 0
        ([90.0, 95.0], 2, 10.0),  # oldest of the tails
        ([None, 97.0], 5, 3.0),  # unstamped tails are skipped
        ([None], 1, None),  # waiting but no stamp: unknown, not 0
        ([105.0], 1, 0.0),  # producer clock ahead: clamped to 0
    ],
)
def test_oldest_age(stamps: list[float | None], waiting: int, expected: float | None) -> None:
    assert oldest_age(stamps, waiting=waiting, now=100.0) == expected


def test_payload_decoding() -> None:
    message = {"headers": {"eta": "2030-01-01T00:00:00+00:00", "published_at": 5.0}}
    raw = json.dumps([message, "", "q"])
    assert parse_unacked(raw) == UnackedEntry(queue="q", eta=1893456000.0)
    # A named exchange's binding routes the routing key to another queue.
    routed = json.dumps([{"headers": {}}, "ex", "rk"])
    assert parse_unacked(routed, routes={("ex", "rk"): "real"}) == UnackedEntry("real", None)
    assert parse_unacked("not json") is None
    assert published_at(json.dumps(message)) == 5.0
    assert published_at(b"\xff") is None
    entries = [UnackedEntry("a", None), UnackedEntry("a", 200.0), UnackedEntry("a", 50.0)]
    # ETA in the future is scheduled; an ETA that has passed is running work.
    assert count_unacked(entries, now=100.0) == {"a": (2, 1)}


@given(
    scores=st.lists(st.integers(min_value=0, max_value=40), max_size=200),
    size=st.integers(min_value=1, max_value=16),
)
def test_buckets_partition_the_range(scores: list[int], size: int) -> None:
    items = sorted(((f"t{i}", float(s)) for i, s in enumerate(scores)), key=lambda x: x[1])
    buckets = normalize(split_range(items, lo=-math.inf, hi=50.0, size=size), size=size)
    # Contiguous cover of (lo, hi], every item in exactly the bucket whose range holds it.
    assert buckets[0].lo == -math.inf
    assert buckets[-1].hi == 50.0
    for left, right in itertools.pairwise(buckets):
        assert left.hi == right.lo
    seen = [tag for bucket in buckets for tag in bucket.tags]
    assert sorted(seen) == sorted(tag for tag, _ in items)
    for bucket in buckets:
        assert all(bucket.lo < score <= bucket.hi for score in bucket.tags.values())


def truth(broker: Any, now: float) -> dict[str, tuple[int, int]]:
    """The naive full read the tracker avoids: HGETALL and decode everything."""
    raw = broker.client.hgetall(broker.keyprefix + "unacked")
    return count_unacked([e for e in map(parse_unacked, raw.values()) if e], now=now)


def test_tracker_stays_exact_under_churn(redis_broker: Any) -> None:
    """Deliver and acknowledge through kombu's Redis QoS at random; compare every read."""
    rng = random.Random(7)
    options = redis_broker.transport_options()
    names = [f"churn{i}-{redis_broker.run}" for i in range(3)]
    reader = RedisQueueReader(
        url=redis_broker.url, transport_options=options, bucket_size=8, slack=0.0
    )
    with Connection(redis_broker.url, transport_options=options) as connection:
        channel = connection.channel()
        producer = Producer(channel)
        for name in names:
            queue = Queue(name, Exchange(name), routing_key=name)
            for index in range(120):
                headers = {"eta": "2099-01-01T00:00:00+00:00"} if index % 7 == 0 else {}
                producer.publish(
                    {"i": index}, exchange=queue.exchange, routing_key=name,
                    declare=[queue], headers=headers,
                )  # fmt: skip
        delivered: list[Any] = []
        peak = 0
        for step in range(40):
            for _ in range(rng.randint(0, 12)):
                message = channel.basic_get(rng.choice(names), no_ack=False)
                if message is not None:
                    delivered.append(message)
            rng.shuffle(delivered)
            for _ in range(rng.randint(0, min(8, len(delivered)))):
                delivered.pop().ack()
            now = time.time()
            stats = {s.name: s for s in reader.read(names, now=now)}
            expected = truth(redis_broker, now)
            peak = max(peak, sum(sum(pair) for pair in expected.values()))
            for name in names:
                assert (stats[name].inflight, stats[name].scheduled) == expected.get(
                    name, (0, 0)
                ), f"step {step}"
        assert sum(s.inflight or 0 for s in stats.values()) + sum(
            s.scheduled or 0 for s in stats.values()
        ) == len(delivered)
        assert peak > 20  # the churn really held many messages unacked at once
        # Messages left unacked go back to their queues when the channel closes.
        channel.close()
