"""``/metrics`` as Prometheus sees it: promtool's lint, a real Prometheus scraping the
exporter and answering PromQL, and ``parse_exposition`` giving back what was read."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from tide.exporter.collector import ExporterState, Snapshot, families
from tide.exporter.scrape import parse_exposition
from tide.exporter.stats import QueueStats
from tide_celery.layout import COMPLETED_KEY

HOLD = "exporter_test.hold"


def check_metrics(promtool: str, text: str) -> None:
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_exposition_passes_promtool_and_parses_back(
    redis_broker: Any, exporter_factory: Callable[..., Any], promtool: str
) -> None:
    queue, empty = f"expo-{redis_broker.run}", f"expo-empty-{redis_broker.run}"
    app = redis_broker.make_app()
    for priority in (1, 5, 9):
        app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue, priority=priority)
    # Workers with the integration once finished tasks here: its counts are real.
    redis_broker.client.hset(redis_broker.keyprefix + COMPLETED_KEY, queue, 3)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue, empty),
    )
    text = httpx.get(exporter.url + "/metrics").text
    check_metrics(promtool, text)
    parsed = parse_exposition(text)
    assert parsed[queue].waiting == 3
    assert (parsed[queue].inflight, parsed[queue].scheduled, parsed[queue].stale) == (0, 0, False)
    assert (parsed[queue].completed, parsed[queue].running) == (3, 0)
    # No worker with the integration ever served it: no completion or running count.
    assert parsed[empty] == QueueStats(
        name=empty, waiting=0, inflight=0, scheduled=0, oldest_age=0.0, source="redis"
    )
    assert httpx.get(exporter.url + "/healthz").status_code == 200
    assert httpx.get(exporter.url + "/nothing").status_code == 404


def test_error_and_stale_expositions_pass_promtool(promtool: str) -> None:
    stats = QueueStats(
        name="q", waiting=3, inflight=None, scheduled=None, oldest_age=None, source="amqp"
    )
    rows = [
        # Broker down since start: health series only, no queue samples.
        Snapshot(up=False, reads=2, errors={"ConnectionError": 2}, last_duration=0.01),
        # Down after a good read: last values kept, stale, error counted.
        Snapshot(
            stats=(stats,), up=False, last_success=time.time(), reads=3, errors={"TimeoutError": 1}
        ),
        # Healthy, a source that cannot tell in-flight: those series are absent, not 0.
        Snapshot(stats=(stats,), up=True, last_success=time.time(), reads=1, last_duration=0.001),
    ]
    for snapshot in rows:

        class Fixed(Collector):
            def collect(self, snapshot: Snapshot = snapshot) -> Any:
                return families(snapshot)

        registry = CollectorRegistry()
        registry.register(Fixed())
        text = generate_latest(registry).decode()
        check_metrics(promtool, text)
        parsed = parse_exposition(text)
        if snapshot.stats:
            assert parsed["q"].stale == (not snapshot.up)
            assert (parsed["q"].inflight, parsed["q"].oldest_age) == (None, None)
        else:
            assert parsed == {}
    assert ExporterState().snapshot().up is False


def test_prometheus_scrapes_the_exporter(
    redis_broker: Any,
    exporter_factory: Callable[..., Any],
    prometheus_factory: Callable[..., Any],
    wait: Callable[..., Any],
) -> None:
    queue, never = f"prom-{redis_broker.run}", f"prom-never-{redis_broker.run}"
    app = redis_broker.make_app()
    for priority in (0, 4, 8, 9):
        app.tasks[HOLD].apply_async(args=[redis_broker.run], queue=queue, priority=priority)
    redis_broker.client.hset(redis_broker.keyprefix + COMPLETED_KEY, queue, 2)
    exporter = exporter_factory(
        broker_url=redis_broker.url,
        transport_options=redis_broker.transport_options(),
        queues=(queue, never),
    )
    prometheus = prometheus_factory([f"127.0.0.1:{exporter.port}"])

    def value(expr: str) -> float | None:
        result = prometheus.query(expr)
        return float(result[0]["value"][1]) if result else None

    wait(lambda: value(f'celery_queue_length{{queue_name="{queue}"}}') == 4, what="scraped")
    assert value(f'celery_queue_length{{queue_name="{never}"}}') == 0
    assert value(f'celery_queue_inflight{{queue_name="{queue}"}}') == 0
    assert value(f'celery_queue_scheduled{{queue_name="{queue}"}}') == 0
    # The integration's counter, typed as a counter; absent where nothing counts.
    assert value(f'celery_queue_completed_total{{queue_name="{queue}"}}') == 2
    assert value(f'celery_queue_completed_total{{queue_name="{never}"}}') is None
    assert value(f'celery_queue_running{{queue_name="{queue}"}}') == 0
    # Prometheus scrapes OpenMetrics, where the family is named without "_total".
    metadata = httpx.get(f"{prometheus.url}/api/v1/metadata").json()["data"]
    assert metadata["celery_queue_completed"][0]["type"] == "counter"
    age = value(f'celery_queue_oldest_age_seconds{{queue_name="{queue}"}}')
    assert age is not None
    assert age >= 0
    assert value('up{job="tide-exporter"}') == 1
    assert value("tide_exporter_up") == 1
    source = prometheus.query(f'tide_exporter_queue_source_info{{queue_name="{queue}"}}')
    assert source[0]["metric"]["source"] == "redis"
