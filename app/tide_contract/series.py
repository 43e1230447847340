"""The queue series (Contract 1): their names, and the one parser of their exposition.

Names are compatible with celery-exporter (``celery_queue_length{queue_name}``), so
dashboards, alerts and the operator read either exporter; the rest are Tide's own. Every
reader of an exporter's ``/metrics`` text (the operator's exporter source, local mode, the
exporter's own consumers and tests) goes through ``parse_queue_series``, which uses
prometheus-client's parser and keeps only these series, so it also reads celery-exporter's
output (where only ``celery_queue_length`` is present and the other figures are absent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

#: The label that names the queue on every queue series.
QUEUE_LABEL: Final = "queue_name"

#: Messages waiting, summed over priority sub-queues.
QUEUE_LENGTH: Final = "celery_queue_length"
#: Delivered but not acknowledged, plus running tasks acknowledged early (integration).
QUEUE_INFLIGHT: Final = "celery_queue_inflight"
#: ETA/countdown tasks held by workers.
QUEUE_SCHEDULED: Final = "celery_queue_scheduled"
#: Age of the oldest waiting message (needs the integration's publish stamp).
QUEUE_OLDEST_AGE: Final = "celery_queue_oldest_age_seconds"
#: Messages that left the queue: a counter (the sample's name keeps ``_total``;
#: prometheus-client's parser names the family without it).
QUEUE_COMPLETED: Final = "celery_queue_completed_total"
#: Tasks executing now, from the integration's workers.
QUEUE_RUNNING: Final = "celery_queue_running"
#: Messages dead workers held that recovery put back in the queue: a counter (Redis).
QUEUE_RECOVERED: Final = "celery_queue_recovered_total"
#: Where the exporter read each queue's figures (an info metric: samples end in ``_info``).
QUEUE_SOURCE: Final = "tide_exporter_queue_source"
#: 1 when the exporter's last broker read failed and its figures are old.
EXPORTER_STALE: Final = "tide_exporter_stale"
#: 1 when the exporter's last broker read succeeded. Only Tide's exporters publish it, so
#: ``… and on (job, instance) tide_exporter_up`` keeps their series apart from another
#: exporter's of the same names (celery-exporter).
EXPORTER_UP: Final = "tide_exporter_up"
#: Per queue and task, from the integration's workers (Redis brokers; see
#: ``tide_celery.outcomes``): runs by end state, failures by exception class, and the
#: runtime and wait histograms. Only Tide's exporters publish these names.
TASK_RUNS: Final = "tide_task_runs_total"
TASK_FAILURES: Final = "tide_task_failures_total"
TASK_RUNTIME: Final = "tide_task_runtime_seconds"
TASK_WAIT: Final = "tide_task_wait_seconds"
#: The label that names the task (as Flower's series name it).
TASK_LABEL: Final = "task"
#: The run's end state (Celery's: SUCCESS, FAILURE, RETRY, IGNORED, REJECTED).
STATE_LABEL: Final = "state"
#: The exception class a failed run raised.
EXCEPTION_LABEL: Final = "exception"
#: The PromQL clause that keeps only the series of Tide's exporters.
TIDE_TARGETS: Final = f"and on (job, instance) {EXPORTER_UP}"

#: Series name -> the figure it carries, as readers name it.
FIGURES: Final[Mapping[str, str]] = {
    QUEUE_LENGTH: "waiting",
    QUEUE_INFLIGHT: "inflight",
    QUEUE_SCHEDULED: "scheduled",
    QUEUE_OLDEST_AGE: "oldest_age",
    QUEUE_COMPLETED: "completed",
    QUEUE_RUNNING: "running",
    QUEUE_RECOVERED: "recovered",
}


@dataclass(frozen=True)
class QueueSeries:
    """What one exposition says: figures per queue, where each was read, staleness.

    A queue appears when its ``celery_queue_length`` does; a figure its exporter does not
    give is absent from the queue's mapping (never a false 0).
    """

    figures: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    stale: bool = False


def parse_queue_series(text: str) -> QueueSeries:
    """Parse Prometheus text exposition into the queue figures it carries."""
    figures: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    stale = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name in FIGURES and QUEUE_LABEL in labels:
                figures.setdefault(labels[QUEUE_LABEL], {})[FIGURES[sample.name]] = sample.value
            elif sample.name == QUEUE_SOURCE + "_info" and QUEUE_LABEL in labels:
                sources[labels[QUEUE_LABEL]] = labels.get("source", "")
            elif sample.name == EXPORTER_STALE:
                stale = sample.value >= 1
    return QueueSeries(
        figures={q: f for q, f in figures.items() if "waiting" in f},
        sources=sources,
        stale=stale,
    )
