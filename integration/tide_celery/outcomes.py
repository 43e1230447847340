"""How each run ended, how long it ran and how long it waited: counters kept by the workers.

Per queue and task name, in one hash of the broker's Redis (``_tide.tasks``, see
``tide_celery.layout``), every run a worker with the integration finishes adds:

* one to its end state (``SUCCESS``, ``FAILURE``, ``RETRY``, ``IGNORED``, ``REJECTED``);
* for a ``FAILURE``, one to the exception's class (``ValueError``, or
  ``requests.exceptions.Timeout`` outside the builtins): failures by exception;
* its runtime, ``task_prerun`` to ``task_postrun`` on the pool process's monotonic clock,
  into a histogram (one bucket field and the ``sum``);
* its wait, from the publish stamp (or the ETA, for a countdown or ETA task: the delay was
  asked for) to ``task_prerun``, on the wall clock of two machines, so clamped at 0.

Why the workers count and not the exporter from Celery's events: events need
``worker_send_task_events`` on every worker and a receiver that never misses one (an
exporter restart loses every event meanwhile, and two receivers count everything twice);
the hash is written in the round trip the completion counter already makes, survives
exporter restarts, and any number of exporters read the same figures. Like the
completion counter it needs a Redis broker (on RabbitMQ nothing is written; Flower's
events remain the source there).

The counts are cumulative from the first run on the broker: Prometheus reads them as
counters and histograms (``tide_task_*``). Their number of fields grows with queues x
tasks x buckets (about 20 + states + exceptions per task and queue), which a Celery app's
task registry bounds.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timezone
from typing import Any, Tuple

from celery import states

from tide_celery.layout import (
    FAILURE,
    RUNTIME,
    STATE,
    SUM,
    WAIT,
    bucket_of,
    tasks_field,
)

#: (command, field, amount): ``HINCRBY`` for counts, ``HINCRBYFLOAT`` for sums.
# typing's Tuple: the integration runs on Python 3.8, where tuple[...] fails at import.
Increment = Tuple[str, str, Any]


def exception_name(error: BaseException | None) -> str:
    """The label a failure is counted under: the exception's class."""
    if error is None:
        return "unknown"
    kind = type(error)
    if kind.__module__ == builtins.__name__:
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def started_waiting(published_at: Any, eta: Any) -> float | None:
    """Unix time the run began to wait: its publish stamp, or its ETA when that is later."""
    begin: float | None = None
    if isinstance(published_at, (int, float)) and not isinstance(published_at, bool):
        begin = float(published_at)
    if isinstance(eta, str) and eta:
        try:
            when = datetime.fromisoformat(eta)
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is None:  # Celery's naive ETAs are UTC (enable_utc)
                when = when.replace(tzinfo=timezone.utc)
            begin = max(begin or 0.0, when.timestamp())
    return begin


def _histogram(kind: str, queue: str, task: str, seconds: float) -> list[Increment]:
    seconds = max(0.0, seconds)
    return [
        ("HINCRBY", tasks_field(kind, queue, task, str(bucket_of(seconds))), 1),
        ("HINCRBYFLOAT", tasks_field(kind, queue, task, SUM), seconds),
    ]


def increments(
    *,
    queue: str,
    task: str,
    state: str | None,
    retval: Any,
    runtime: float | None,
    wait: float | None,
) -> list[Increment]:
    """What one finished run adds to ``_tide.tasks`` (a pure function, for the tests)."""
    ended = state or "UNKNOWN"
    found: list[Increment] = [("HINCRBY", tasks_field(STATE, queue, task, ended), 1)]
    if ended == states.FAILURE:
        # On a failure, task_postrun's retval is the exception the task raised.
        error = retval if isinstance(retval, BaseException) else None
        found.append(("HINCRBY", tasks_field(FAILURE, queue, task, exception_name(error)), 1))
    if runtime is not None:
        found += _histogram(RUNTIME, queue, task, runtime)
    if wait is not None:
        found += _histogram(WAIT, queue, task, wait)
    return found
