"""Per-task series: runs by end state, failures by exception, runtime and wait histograms.

Counted by real workers with the integration (``tide_celery.outcomes``) into the broker's
Redis, read by the exporter in its usual round trip, checked as text (promtool) and as a
real Prometheus reads them. The worker test compares with what the test knows it sent and
how each task was told to end: exact counts, and bucket bounds each run must fall on the
right side of.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from test_exporter_exposition import check_metrics

from tide.exporter.collector import Snapshot, families
from tide.exporter.readers import RedisQueueReader
from tide.exporter.tasks import TaskFigures, cumulative, parse_tasks
from tide_celery.layout import BUCKETS, TASKS_KEY, tasks_field
from tide_contract.series import TASK_FAILURES, TASK_RUNS, TASK_RUNTIME, TASK_WAIT

OUTCOME = "exporter_test.outcome"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """name + labels -> value, for every sample of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


# ----------------------------------------------------------------------------- pure parts


def test_parse_tasks_builds_cumulative_histograms() -> None:
    reply = {
        tasks_field("state", "q", "t", "SUCCESS").encode(): b"3",
        tasks_field("state", "q", "t", "FAILURE").encode(): b"1",
        tasks_field("failure", "q", "t", "ValueError").encode(): b"1",
        tasks_field("runtime", "q", "t", "0").encode(): b"2",  # <= 5 ms
        tasks_field("runtime", "q", "t", str(len(BUCKETS))).encode(): b"2",  # +Inf
        tasks_field("runtime", "q", "t", "sum").encode(): b"7300.01",
        # Not ours, or malformed: skipped, never fatal.
        b"something-else": b"1",
        tasks_field("runtime", "q", "t", "99").encode(): b"5",
        tasks_field("state", "q", "t", "RETRY").encode(): b"many",
    }
    figures = parse_tasks(reply)
    assert figures.runs == {("q", "t", "SUCCESS"): 3, ("q", "t", "FAILURE"): 1}
    assert figures.failures == {("q", "t", "ValueError"): 1}
    counts, total = figures.runtime[("q", "t")]
    assert total == pytest.approx(7300.01)
    buckets = cumulative(counts)
    # Cumulative: every bound holds the 2 fast runs; +Inf holds all 4.
    assert buckets[0] == ("0.005", 2.0)
    assert buckets[-2] == ("3600.0", 2.0)
    assert buckets[-1] == ("+Inf", 4.0)
    # RESP2's flat list parses the same.
    flat = [part for pair in reply.items() for part in pair]
    assert parse_tasks(flat) == figures
    assert parse_tasks(None) == TaskFigures()


def test_task_series_pass_promtool(promtool: str) -> None:
    figures = parse_tasks(
        {
            tasks_field("state", "q", "t", "SUCCESS"): "2",
            tasks_field("failure", "q", "t", "requests.exceptions.Timeout"): "1",
            tasks_field("runtime", "q", "t", "5"): "2",
            tasks_field("runtime", "q", "t", "sum"): "0.3",
            tasks_field("wait", "q", "t", "7"): "2",
            tasks_field("wait", "q", "t", "sum"): "1.5",
        }
    )

    class Fixed(Collector):
        def collect(self) -> Any:
            return families(Snapshot(up=True, last_success=time.time(), tasks=figures))

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    check_metrics(promtool, text)
    found = samples(text)
    assert value(found, TASK_RUNS, queue_name="q", task="t", state="SUCCESS") == 2
    timeout = "requests.exceptions.Timeout"
    assert value(found, TASK_FAILURES, queue_name="q", task="t", exception=timeout) == 1
    assert value(found, TASK_RUNTIME + "_count", queue_name="q", task="t") == 2
    assert value(found, TASK_RUNTIME + "_bucket", queue_name="q", task="t", le="0.1") == 0
    assert value(found, TASK_RUNTIME + "_bucket", queue_name="q", task="t", le="0.25") == 2
    assert value(found, TASK_WAIT + "_sum", queue_name="q", task="t") == 1.5
    # No counters read (RabbitMQ, or counting off): no task series at all, not zeros.
    assert not [f for f in families(Snapshot(up=True)) if f.name.startswith("tide_task")]


# ------------------------------------------------------------------------- real workers


def test_workers_count_outcomes_runtime_and_wait(
    redis_broker: Any,
    start_worker: Callable[..., Any],
    exporter_factory: Callable[..., Any],
    prometheus_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue, later = f"tasks-{redis_broker.run}", f"tasks-later-{redis_broker.run}"
    app = redis_broker.make_app()
    outcome = app.tasks[OUTCOME]
    # 3 ok, 2 failures (ValueError), 1 ignore, 1 retry (a RETRY run, then a SUCCESS run),
    # 2 slow ones (at least 1.1 s each): 10 runs.
    for how in ["ok"] * 3 + ["fail"] * 2 + ["ignore", "retry"] + ["slow"] * 2:
        outcome.apply_async(args=[redis_broker.run, how], queue=queue)
    # A countdown: its wait runs from its ETA, not from its publish 3 s earlier.
    published = time.time()
    outcome.apply_async(args=[redis_broker.run, "ok"], queue=later, countdown=3)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue, later),
    )
    start_worker(
        broker_url=redis_broker.url,
        keyprefix=redis_broker.keyprefix,
        queues=[queue, later],
        concurrency=2,
        release=redis_broker.release,
    )

    def exported() -> dict[Any, float]:
        return samples(httpx.get(exporter.url + "/metrics").text)

    def runs(found: dict[Any, float]) -> dict[str, float | None]:
        return {
            state: value(found, TASK_RUNS, queue_name=queue, task=OUTCOME, state=state)
            for state in ("SUCCESS", "FAILURE", "IGNORED", "RETRY")
        }

    later_labels = {"queue_name": later, "task": OUTCOME}
    wait(
        lambda: value(exported(), TASK_RUNS, **later_labels, state="SUCCESS") == 1,
        timeout=60,
        what="the countdown's run",
    )
    # It started at most this long after its ETA: a wait counted from the publish would be
    # 3 s longer (it cannot start before its ETA), one from the ETA is within this bound.
    since_eta = time.time() - published - 3
    expected = {"SUCCESS": 6, "FAILURE": 2, "IGNORED": 1, "RETRY": 1}
    wait(
        lambda: runs(exported()) == expected,
        timeout=60,
        what=f"runs {expected}",
        explain=lambda: str(runs(exported())),
    )
    found = exported()
    labels = {"queue_name": queue, "task": OUTCOME}
    # Failures by exception: the two ValueErrors, nothing else.
    assert {
        dict(key[1])["exception"]: count
        for key, count in found.items()
        if key[0] == TASK_FAILURES and dict(key[1])["queue_name"] == queue
    } == {"ValueError": 2}
    # Every run has a runtime and a wait.
    assert value(found, TASK_RUNTIME + "_count", **labels) == 10
    assert value(found, TASK_WAIT + "_count", **labels) == 10
    # The two slow runs took at least 1.1 s: above the 1 s bound, the quick ones below it
    # (a worker's first runs pay for imports and connections, so not below 0.25 s).
    buckets = {
        dict(key[1])["le"]: count
        for key, count in found.items()
        if key[0] == TASK_RUNTIME + "_bucket" and dict(key[1])["queue_name"] == queue
    }
    assert buckets["1.0"] == 8, buckets
    assert buckets["10.0"] == 10, buckets
    assert (value(found, TASK_RUNTIME + "_sum", **labels) or 0) >= 2.2
    # The countdown's wait starts at its ETA, not at its publish.
    assert value(found, TASK_WAIT + "_count", **later_labels) == 1
    assert 0 <= (value(found, TASK_WAIT + "_sum", **later_labels) or -1) <= since_eta + 0.1

    # Nothing written outside the run's prefix.
    assert not redis_broker.client.exists(TASKS_KEY)
    assert redis_broker.client.exists(redis_broker.keyprefix + TASKS_KEY)

    # A real Prometheus reads them as counters and histograms.
    prometheus = prometheus_factory([f"127.0.0.1:{exporter.port}"])

    def scalar(expr: str) -> float | None:
        result = prometheus.query(expr)
        return float(result[0]["value"][1]) if result else None

    wait(
        lambda: scalar(f'sum(tide_task_failures_total{{queue_name="{queue}"}})') == 2,
        what="scraped",
    )
    metadata = httpx.get(f"{prometheus.url}/api/v1/metadata").json()["data"]
    assert metadata["tide_task_runs"][0]["type"] == "counter"
    assert metadata["tide_task_runtime_seconds"][0]["type"] == "histogram"


def test_reader_without_counting_reads_no_task_figures(redis_broker: Any) -> None:
    queue = f"tasks-off-{redis_broker.run}"
    redis_broker.client.hset(
        redis_broker.keyprefix + TASKS_KEY, tasks_field("state", queue, "t", "SUCCESS"), 4
    )
    counting = RedisQueueReader(
        url=redis_broker.url, transport_options=redis_broker.transport_options()
    )
    silent = RedisQueueReader(
        url=redis_broker.url, transport_options=redis_broker.transport_options(), completions=False
    )
    try:
        counting.read([queue], now=time.time())
        silent.read([queue], now=time.time())
        assert counting.last_tasks is not None
        assert counting.last_tasks.runs == {(queue, "t", "SUCCESS"): 4}
        assert silent.last_tasks is None
    finally:
        counting.close()
        silent.close()
