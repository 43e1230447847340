"""Reading an exporter's ``/metrics`` back into ``QueueStats``, for the exporter's consumers.

Local mode and the operator's "scrape the exporter directly" metric source read the same
text Prometheus reads, so they see exactly what Prometheus would, including staleness.
Parsing goes through prometheus-client's own parser; anything that is not one of the
exporter's queue series is ignored, so the function also reads celery-exporter's output
(``celery_queue_length`` only: the other figures come back as ``None``).
``celery_queue_completed_total`` is read from its sample (the family is named without
``_total`` by the parser, the sample keeps it).
"""

from __future__ import annotations

import httpx

from tide.exporter.stats import QueueStats
from tide_contract.series import parse_queue_series


def parse_exposition(text: str) -> dict[str, QueueStats]:
    """Queue name -> ``QueueStats`` from Prometheus text exposition.

    A queue appears when its ``celery_queue_length`` does. ``stale`` is set on every queue
    when the exporter says its last read failed (``tide_exporter_stale 1``). The parsing is
    ``tide_contract.series``'s, the one the operator uses too.
    """
    parsed = parse_queue_series(text)
    result: dict[str, QueueStats] = {}
    for queue, values in parsed.figures.items():
        inflight = values.get("inflight")
        scheduled = values.get("scheduled")
        completed = values.get("completed")
        running = values.get("running")
        recovered = values.get("recovered")
        result[queue] = QueueStats(
            name=queue,
            waiting=int(values["waiting"]),
            inflight=None if inflight is None else int(inflight),
            scheduled=None if scheduled is None else int(scheduled),
            oldest_age=values.get("oldest_age"),
            source=parsed.sources.get(queue, "exposition"),
            stale=parsed.stale,
            completed=None if completed is None else int(completed),
            running=None if running is None else int(running),
            recovered=None if recovered is None else int(recovered),
        )
    return result


def scrape(url: str, *, timeout: float = 5.0) -> dict[str, QueueStats]:
    """GET an exporter's ``/metrics`` (``url`` with or without the path) and parse it."""
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    return parse_exposition(response.text)
