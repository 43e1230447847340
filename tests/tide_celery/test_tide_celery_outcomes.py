"""What one finished run adds to the per-task counters (``tide_celery.outcomes``), as pure
functions: the real workers' counts are checked in ``tests/tide/exporter``."""

from __future__ import annotations

from typing import Any

import pytest
from celery import states
from celery.exceptions import Reject

from tide_celery.layout import BUCKETS, bucket_of, parse_tasks_field, tasks_field
from tide_celery.outcomes import exception_name, increments, started_waiting


class Timeout(Exception):
    """An exception from outside the builtins."""


INCREMENT_ROWS = [
    # A success: its state, runtime and wait, nothing else.
    pytest.param(
        states.SUCCESS,
        "result",
        0.2,
        1.0,
        [
            ("HINCRBY", ("state", "SUCCESS"), 1),
            ("HINCRBY", ("runtime", "5"), 1),
            ("HINCRBYFLOAT", ("runtime", "sum"), 0.2),
            ("HINCRBY", ("wait", "7"), 1),
            ("HINCRBYFLOAT", ("wait", "sum"), 1.0),
        ],
        id="success",
    ),
    # A failure counts its exception class (retval is the exception in task_postrun).
    pytest.param(
        states.FAILURE,
        ValueError("x"),
        None,
        None,
        [("HINCRBY", ("state", "FAILURE"), 1), ("HINCRBY", ("failure", "ValueError"), 1)],
        id="failure-builtin",
    ),
    # Outside the builtins the module names the class, so two Timeouts stay apart.
    pytest.param(
        states.FAILURE,
        Timeout(),
        None,
        None,
        [
            ("HINCRBY", ("state", "FAILURE"), 1),
            ("HINCRBY", ("failure", f"{__name__}.Timeout"), 1),
        ],
        id="failure-qualified",
    ),
    # A retry and a reject are end states, not failures.
    pytest.param(states.RETRY, None, None, None, [("HINCRBY", ("state", "RETRY"), 1)], id="retry"),
    pytest.param(
        states.REJECTED, Reject("x"), None, None, [("HINCRBY", ("state", "REJECTED"), 1)], id="rej"
    ),
    # Clocks of two machines: a negative wait is clamped at 0 (bucket 0), not dropped.
    pytest.param(
        states.SUCCESS,
        None,
        None,
        -0.5,
        [
            ("HINCRBY", ("state", "SUCCESS"), 1),
            ("HINCRBY", ("wait", "0"), 1),
            ("HINCRBYFLOAT", ("wait", "sum"), 0.0),
        ],
        id="clock-skew",
    ),
]


@pytest.mark.parametrize(("state", "retval", "runtime", "wait", "expected"), INCREMENT_ROWS)
def test_increments_of_a_run(
    state: str, retval: Any, runtime: float | None, wait: float | None, expected: list[Any]
) -> None:
    found = increments(queue="q", task="t", state=state, retval=retval, runtime=runtime, wait=wait)
    assert found == [
        (command, tasks_field(kind, "q", "t", part), amount)
        for command, (kind, part), amount in expected
    ]


def test_buckets_and_fields() -> None:
    # Each row: seconds -> the index of the first bound at or above it.
    assert bucket_of(0.0) == 0
    assert bucket_of(0.005) == 0  # a bound is inclusive, as Prometheus' le
    assert bucket_of(0.0051) == 1
    assert bucket_of(3600.0) == len(BUCKETS) - 1
    assert bucket_of(3601.0) == len(BUCKETS)  # +Inf
    assert parse_tasks_field(tasks_field("state", "q", "t", "SUCCESS")) == (
        "state",
        "q",
        "t",
        "SUCCESS",
    )
    assert parse_tasks_field("state\x1fq") is None
    assert exception_name(None) == "unknown"


def test_wait_starts_at_publish_or_eta() -> None:
    # Each row: the publish stamp and the ETA header -> when the wait began.
    assert started_waiting(100.0, None) == 100.0
    # An ETA after the publish: the delay was asked for, the wait starts at the ETA.
    assert started_waiting(100.0, "1970-01-01T00:03:20+00:00") == 200.0
    # A naive ETA is UTC (Celery's enable_utc).
    assert started_waiting(100.0, "1970-01-01T00:03:20") == 200.0
    # An ETA before the publish (a retry's countdown=0 computed earlier): the publish.
    assert started_waiting(300.0, "1970-01-01T00:03:20+00:00") == 300.0
    # No stamp (a producer without the integration) and no ETA: no wait is counted.
    assert started_waiting(None, None) is None
    assert started_waiting(True, "garbage") is None
