"""The API's Prometheus metrics: HTTP requests, job submissions, and jobs by state.

Under gunicorn each worker process counts on its own; with ``PROMETHEUS_MULTIPROC_DIR``
set (``tide api`` sets it) prometheus-client's multiprocess mode adds them up at scrape
time. Jobs by state are read from the database at scrape time (cached briefly), because
state changes happen in the Celery workers, not in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

HTTP_REQUESTS = Counter(
    "tide_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "tide_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
JOBS_SUBMITTED = Counter("tide_jobs_submitted_total", "Jobs accepted by the API.", ["kind"])
JOBS_REJECTED = Counter(
    "tide_jobs_rejected_total", "Requests the API refused, by reason (the error code).", ["reason"]
)


class JobsByStateCollector(Collector):
    """``tide_jobs{state}``: job rows per state, read at most every ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._cached: tuple[float, dict[str, int]] | None = None

    def _counts(self) -> dict[str, int]:
        from django.db.models import Count

        from tide.jobs.models import Job, JobState

        now = time.monotonic()
        if self._cached and now - self._cached[0] < self.ttl:
            return self._cached[1]
        counts = dict.fromkeys(JobState.values, 0)
        for row in Job.objects.filter(parent__isnull=True).values("state").annotate(n=Count("id")):
            counts[row["state"]] = row["n"]
        self._cached = (now, counts)
        return counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tide_jobs", "Top-level jobs by state.", labels=["state"])
        for state, count in self._counts().items():
            family.add_metric([state], count)
        yield family


_jobs_collector = JobsByStateCollector()


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type, merged across processes when needed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    registry.register(_jobs_collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ProcessMetrics(Collector):
    """This process's own series from the default registry (single-process mode)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
