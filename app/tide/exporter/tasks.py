"""The workers' per-task counters, read: runs by end state, failures, runtime and wait.

Workers with Tide's integration keep one hash under the broker's key prefix
(``_tide.tasks``; ``tide_celery.outcomes`` says what each run adds and why the workers
count rather than an event receiver). The reader fetches it with ``HGETALL`` in the same
round trip as the queue lengths; ``parse_tasks`` turns the reply into ``TaskFigures``,
which the collector formats as prometheus-client families:

* ``tide_task_runs_total{queue_name, task, state}``;
* ``tide_task_failures_total{queue_name, task, exception}``;
* ``tide_task_runtime_seconds`` and ``tide_task_wait_seconds`` histograms
  ``{queue_name, task}`` (cumulative buckets from the per-bucket counts the workers write).

Every figure is cumulative since the first run on this broker, so exporter restarts and
extra exporter replicas change nothing. A malformed field is skipped, not fatal: the hash
is shared with whatever else writes under the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import floatToGoString

from tide_celery.layout import BUCKETS, FAILURE, RUNTIME, STATE, SUM, WAIT, parse_tasks_field

#: (queue, task) -> per-bucket counts (``len(BUCKETS) + 1``, the last one +Inf) and sum.
Histograms = Mapping[tuple[str, str], tuple[tuple[int, ...], float]]


@dataclass(frozen=True)
class TaskFigures:
    """The per-task counters at one read."""

    #: (queue, task, state) -> runs that ended in that state.
    runs: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: (queue, task, exception class) -> failed runs.
    failures: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    runtime: Histograms = field(default_factory=dict)
    wait: Histograms = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_tasks(reply: Any) -> TaskFigures:
    """``HGETALL _tide.tasks`` (RESP2's flat list, or a dict) as ``TaskFigures``."""
    if isinstance(reply, Mapping):
        pairs = [(_text(k), _text(v)) for k, v in reply.items()]
    else:
        items = list(reply or [])
        pairs = [(_text(items[i]), _text(items[i + 1])) for i in range(0, len(items) - 1, 2)]
    runs: dict[tuple[str, str, str], int] = {}
    failures: dict[tuple[str, str, str], int] = {}
    histograms: dict[str, dict[tuple[str, str], tuple[list[int], list[float]]]] = {
        RUNTIME: {},
        WAIT: {},
    }
    for name, value in pairs:
        parsed = parse_tasks_field(name)
        if parsed is None:
            continue
        kind, queue, task, part = parsed
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == STATE:
            runs[(queue, task, part)] = int(number)
        elif kind == FAILURE:
            failures[(queue, task, part)] = int(number)
        elif kind in histograms:
            counts, total = histograms[kind].setdefault(
                (queue, task), ([0] * (len(BUCKETS) + 1), [0.0])
            )
            if part == SUM:
                total[0] = number
            elif part.isdigit() and int(part) <= len(BUCKETS):
                counts[int(part)] = int(number)
    return TaskFigures(
        runs=runs,
        failures=failures,
        runtime={k: (tuple(c), t[0]) for k, (c, t) in histograms[RUNTIME].items()},
        wait={k: (tuple(c), t[0]) for k, (c, t) in histograms[WAIT].items()},
    )


def cumulative(counts: tuple[int, ...]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` -> observations at or below it) from per-bucket counts."""
    bounds = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
    running, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        buckets.append((bound, float(running)))
    return buckets
