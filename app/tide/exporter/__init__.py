"""Tide's queue exporter: exact per-queue demand for Redis and RabbitMQ as Prometheus metrics.

Layers, from pure to I/O: ``stats`` (``QueueStats`` and payload decoding), ``unacked``
(the incremental in-flight tracker), ``readers`` (one ``QueueReader`` per broker),
``collector`` (Prometheus formatting, staleness, own health), ``poller`` (reads on an
interval), ``server`` (``/metrics`` and ``/healthz``), ``cli`` (``tide exporter``).
Consumers use ``read_queues`` in-process or ``parse_exposition`` on scraped text. See
``docs/exporter.md`` for the metrics reference.
"""

from __future__ import annotations

from tide.exporter.queues import read_queues
from tide.exporter.scrape import parse_exposition, scrape
from tide.exporter.stats import QueueStats

__all__ = ["QueueStats", "parse_exposition", "read_queues", "scrape"]
