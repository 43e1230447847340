"""An exporter started while the broker refuses connections answers at once with what it
knows (``tide_exporter_up 0`` and the error counter) and keeps reading at its interval,
instead of staying silent for the connect retries and then reading every ~14 s."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
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


def test_broker_refusing_at_start(
    exporter_factory: Callable[..., RunningExporter], wait: Any
) -> None:
    started = time.monotonic()
    exporter = exporter_factory(
        broker_url=f"redis://127.0.0.1:{refused_port()}/0", queues=("default",), interval=0.5
    )
    # Serving within a second of the start, saying the broker is down.
    assert time.monotonic() - started < 1.5
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
