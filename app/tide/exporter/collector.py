"""Prometheus formatting of the last read, its staleness, and the exporter's own health.

``ExporterState`` is the only state shared between the poller thread (which writes a read
or a failure) and HTTP threads (which format it); one lock guards it and the formatting
works on an immutable ``Snapshot``. ``families`` is a pure function of a snapshot and the
time, so what ``/metrics`` says in every situation (healthy, broker down since start,
down after good reads) is tested without a server.

When a read fails the last good values stay on ``/metrics`` with ``tide_exporter_stale``
at 1 and ``tide_exporter_up`` at 0: a scaler that reads them can hold its course or fall
back, while dropping the series would look like "queue empty" to a careless query, which
is the one reading that makes an autoscaler remove busy workers. The series names follow
celery-exporter (``celery_queue_length{queue_name}``) so existing dashboards and the
operator's default queries read Tide's exporter unchanged.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tide.exporter.stats import QueueStats
from tide.exporter.tasks import TaskFigures, cumulative

# The series' names have one home, shared with the operator.
from tide_contract.series import (
    EXCEPTION_LABEL,
    EXPORTER_STALE,
    QUEUE_COMPLETED,
    QUEUE_INFLIGHT,
    QUEUE_LABEL,
    QUEUE_LENGTH,
    QUEUE_OLDEST_AGE,
    QUEUE_RECOVERED,
    QUEUE_RUNNING,
    QUEUE_SCHEDULED,
    QUEUE_SOURCE,
    STATE_LABEL,
    TASK_FAILURES,
    TASK_LABEL,
    TASK_RUNS,
    TASK_RUNTIME,
    TASK_WAIT,
)

UP = "tide_exporter_up"
SCRAPE_DURATION = "tide_exporter_scrape_duration_seconds"
LAST_SUCCESS = "tide_exporter_last_success_timestamp_seconds"
READS = "tide_exporter_reads"
BROKER_ERRORS = "tide_exporter_broker_errors"
QUEUES_WATCHED = "tide_exporter_queues"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the exporter knows at one instant, for formatting."""

    stats: tuple[QueueStats, ...] = ()
    #: The workers' per-task counters (Redis with the integration), else ``None``.
    tasks: TaskFigures | None = None
    up: bool = False
    last_success: float | None = None
    last_duration: float | None = None
    reads: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)


class ExporterState:
    """The last read and the health counters, written by the poller, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: tuple[QueueStats, ...] = ()
        self._tasks: TaskFigures | None = None
        self._up = False
        self._last_success: float | None = None
        self._last_duration: float | None = None
        self._reads = 0
        self._errors: Counter[str] = Counter()

    def record_success(
        self,
        stats: Iterable[QueueStats],
        *,
        duration: float,
        now: float,
        tasks: TaskFigures | None = None,
    ) -> None:
        with self._lock:
            self._stats = tuple(stats)
            self._tasks = tasks
            self._up = True
            self._last_success = now
            self._last_duration = duration
            self._reads += 1

    def record_failure(self, error: BaseException, *, duration: float) -> None:
        with self._lock:
            self._up = False
            self._last_duration = duration
            self._reads += 1
            self._errors[type(error).__name__] += 1

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                stats=self._stats,
                tasks=self._tasks,
                up=self._up,
                last_success=self._last_success,
                last_duration=self._last_duration,
                reads=self._reads,
                errors=dict(self._errors),
            )


def families(snapshot: Snapshot) -> list[Metric]:
    """The metric families for ``snapshot``; queue series carry the last good values."""
    label = [QUEUE_LABEL]
    length = GaugeMetricFamily(
        QUEUE_LENGTH,
        "Messages waiting in the queue, summed over priority sub-queues.",
        labels=label,
    )
    inflight = GaugeMetricFamily(
        QUEUE_INFLIGHT,
        "Messages delivered to workers and not finished: unacknowledged (prefetched, and "
        "running under late acks) plus, on Redis, tasks the integration reports running "
        "(early acks); ETA tasks excluded.",
        labels=label,
    )
    scheduled = GaugeMetricFamily(
        QUEUE_SCHEDULED,
        "ETA/countdown tasks held unacknowledged by workers until their time.",
        labels=label,
    )
    age = GaugeMetricFamily(
        QUEUE_OLDEST_AGE,
        "Seconds since the oldest waiting message was published (0 when none waits).",
        labels=label,
    )
    completed = CounterMetricFamily(
        QUEUE_COMPLETED,
        "Messages that left the queue since the broker's count began: tasks finished "
        "(Redis: counted by workers with Tide's integration) or acknowledged (RabbitMQ).",
        labels=label,
    )
    running = GaugeMetricFamily(
        QUEUE_RUNNING,
        "Tasks executing now, as workers with Tide's integration report them (Redis; "
        "included in celery_queue_inflight).",
        labels=label,
    )
    recovered = CounterMetricFamily(
        QUEUE_RECOVERED,
        "Messages dead workers held unacknowledged that Tide's recovery put back in the "
        "queue (Redis, workers with Tide's integration).",
        labels=label,
    )
    source = InfoMetricFamily(
        QUEUE_SOURCE, "Where the exporter read each queue's figures.", labels=label
    )
    for stats in snapshot.stats:
        value = [stats.name]
        length.add_metric(value, stats.waiting)
        if stats.inflight is not None:
            inflight.add_metric(value, stats.inflight)
        if stats.scheduled is not None:
            scheduled.add_metric(value, stats.scheduled)
        # Omitted rather than 0 when messages wait without a publish stamp: 0 would claim
        # nothing has waited, which is the wrong answer for a max-wait target.
        if stats.oldest_age is not None:
            age.add_metric(value, stats.oldest_age)
        # Absent where the source keeps no count (AMQP without the management API), so a
        # consumer falls back to counts instead of reading a counter stuck at 0.
        if stats.completed is not None:
            completed.add_metric(value, stats.completed)
        # Absent where no worker with the integration serves the queue: the broker alone
        # cannot see running work under early acks, and 0 would say nothing runs.
        if stats.running is not None:
            running.add_metric(value, stats.running)
        if stats.recovered is not None:
            recovered.add_metric(value, stats.recovered)
        source.add_metric(value, {"source": stats.source})

    stale = snapshot.last_success is not None and not snapshot.up
    health: list[Metric] = [
        GaugeMetricFamily(
            UP, "1 if the last read of the broker succeeded.", value=int(snapshot.up)
        ),
        GaugeMetricFamily(
            EXPORTER_STALE,
            "1 if the queue figures shown are from an earlier read (the last one failed).",
            value=int(stale),
        ),
        GaugeMetricFamily(
            QUEUES_WATCHED,
            "Queues exported (configured and discovered).",
            value=len(snapshot.stats),
        ),
        CounterMetricFamily(READS, "Reads of the broker attempted.", value=snapshot.reads),
    ]
    if snapshot.last_duration is not None:
        health.append(
            GaugeMetricFamily(
                SCRAPE_DURATION,
                "Wall time of the last read of every queue from the broker.",
                value=snapshot.last_duration,
            )
        )
    if snapshot.last_success is not None:
        health.append(
            GaugeMetricFamily(
                LAST_SUCCESS,
                "Unix time of the last successful read (the queue figures are from then).",
                value=snapshot.last_success,
            )
        )
    errors = CounterMetricFamily(
        BROKER_ERRORS, "Failed reads of the broker, by error type.", labels=["error"]
    )
    for kind, count in sorted(snapshot.errors.items()):
        errors.add_metric([kind], count)
    health.append(errors)
    return [
        length,
        inflight,
        scheduled,
        age,
        completed,
        running,
        recovered,
        source,
        *task_families(snapshot.tasks),
        *health,
    ]


def task_families(tasks: TaskFigures | None) -> list[Metric]:
    """The per-task series; none at all where no worker keeps the counters."""
    if tasks is None:
        return []
    runs = CounterMetricFamily(
        TASK_RUNS,
        "Task runs finished by workers with Tide's integration, by end state (Redis).",
        labels=[QUEUE_LABEL, TASK_LABEL, STATE_LABEL],
    )
    for (queue, task, state), count in sorted(tasks.runs.items()):
        runs.add_metric([queue, task, state], count)
    failures = CounterMetricFamily(
        TASK_FAILURES,
        "Task runs that ended in FAILURE, by the exception's class (Redis).",
        labels=[QUEUE_LABEL, TASK_LABEL, EXCEPTION_LABEL],
    )
    for (queue, task, exception), count in sorted(tasks.failures.items()):
        failures.add_metric([queue, task, exception], count)
    runtime = HistogramMetricFamily(
        TASK_RUNTIME,
        "Seconds a task run took, start to end, any outcome (Redis).",
        labels=[QUEUE_LABEL, TASK_LABEL],
    )
    wait = HistogramMetricFamily(
        TASK_WAIT,
        "Seconds a task waited from its publish (or ETA) to its start (Redis).",
        labels=[QUEUE_LABEL, TASK_LABEL],
    )
    for family, histograms in ((runtime, tasks.runtime), (wait, tasks.wait)):
        for (queue, task), (counts, total) in sorted(histograms.items()):
            family.add_metric([queue, task], cumulative(counts), total)
    return [runs, failures, runtime, wait]


class QueueCollector(Collector):
    """A prometheus-client collector over an ``ExporterState``."""

    def __init__(self, state: ExporterState, *, snapshot: Callable[[], Snapshot] | None = None):
        self._snapshot = snapshot or state.snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot())

    def describe(self) -> Iterable[Metric]:
        # Registration would otherwise call collect() once to learn the names; there is
        # nothing to learn and no read may be assumed to exist yet.
        return []
