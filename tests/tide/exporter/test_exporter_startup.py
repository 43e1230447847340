"""An exporter started while the broker refuses connections answers at once with what it
knows (``tide_exporter_up 0`` and the error counter) and keeps reading at its interval,
instead of staying silent for the connect retries and then reading every ~14 s."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tide.exporter.server import RunningExporter


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(exporter: RunningExporter) -> dict[str, float]:
    text = httpx.get(f"{exporter.url}/metrics", timeout=2).text
    return {
        sample.name + "".join(f"[{k}={v}]" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        # RabbitMQ without the management API: AMQP passive declares (py-amqp alone takes
        # about 2 s to give up on a refused port).
        "amqp://guest:guest@127.0.0.1:{port}//",
    ],
    ids=["redis", "amqp"],
)
def test_broker_refusing_at_start(
    exporter_factory: Callable[..., RunningExporter], wait: Any, url: str
) -> None:
    started = time.monotonic()
    exporter = exporter_factory(
        broker_url=url.format(port=refused_port()), queues=("default",), interval=0.5
    )
    # Serving after the first read's wait (1 s), saying the broker is down: not after the
    # 6-12 s of connect retries a client library would spend (the bound leaves room for a
    # loaded machine).
    assert time.monotonic() - started < 4
    first = scrape(exporter)
    assert first["tide_exporter_up"] == 0
    errors = [v for k, v in first.items() if k.startswith("tide_exporter_broker_errors")]
    assert sum(errors) >= 1
    # No queue figure is invented while nothing was read.
    assert not any(k.startswith("celery_queue_length") for k in first)

    # Then reads at its interval: ten more attempts take about five seconds, not minutes.
    reads_before = first["tide_exporter_reads_total"]
    counting = time.monotonic()
    wait(
        lambda: scrape(exporter)["tide_exporter_reads_total"] >= reads_before + 10,
        timeout=30,
        what="ten more reads",
    )
    assert time.monotonic() - counting < 0.5 * 10 + 2.5
