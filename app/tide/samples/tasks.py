"""Sample tasks covering what users' tasks do: burn CPU, wait on I/O, report progress,
retry with backoff, hit time limits, respect a rate limit, call a flaky service through a
circuit breaker, and small arithmetic steps for workflows.

Each is a ``job_task``, so it is submittable through the API and tracked as a job.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pybreaker
from celery.exceptions import SoftTimeLimitExceeded

from tide.jobs.outbound import check_url
from tide.jobs.registry import job_task


class TransientError(RuntimeError):
    """A failure worth retrying (the kind a flaky dependency produces)."""


@job_task(name="tide.samples.cpu_bound")
def cpu_bound(self: Any, rounds: int = 100_000) -> str:
    """Hash a buffer ``rounds`` times: pure CPU, holds the worker process busy."""
    digest = b"tide"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@job_task(name="tide.samples.io_bound")
def io_bound(self: Any, seconds: float = 1.0) -> float:
    """Wait ``seconds`` as a task blocked on I/O would; returns the time waited."""
    started = time.monotonic()
    time.sleep(seconds)
    return round(time.monotonic() - started, 3)


@job_task(name="tide.samples.with_progress")
def with_progress(self: Any, steps: int = 5, seconds_per_step: float = 0.1) -> int:
    """Work through ``steps`` steps, reporting progress after each."""
    for step in range(1, steps + 1):
        time.sleep(seconds_per_step)
        self.report_progress(100.0 * step / steps, f"step {step} of {steps}")
    return steps


@job_task(
    name="tide.samples.flaky",
    autoretry_for=(TransientError,),
    # Exponential backoff (1 s, 2 s, 4 s … capped) with jitter, so a dependency that is
    # down is not hammered by every retry at once.
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def flaky(self: Any, failures: int = 2) -> int:
    """Fail with a transient error on the first ``failures`` attempts, then succeed."""
    if self.request.retries < failures:
        raise TransientError(f"attempt {self.request.retries + 1} failed")
    return self.request.retries


@job_task(name="tide.samples.time_limited", soft_time_limit=1, time_limit=3)
def time_limited(self: Any, seconds: float = 0.5, ignore_soft_limit: bool = False) -> str:
    """Sleep ``seconds`` under a 1 s soft and 3 s hard limit.

    The soft limit raises inside the task, which cleans up and reports a partial result;
    with ``ignore_soft_limit`` it keeps going and the hard limit kills it.
    """
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        if not ignore_soft_limit:
            return "stopped at the soft time limit"
        time.sleep(seconds)
    return "finished"


@job_task(name="tide.samples.rate_limited", rate_limit="20/s")
def rate_limited(self: Any, value: int = 0) -> int:
    """At most 20 per second per worker: the way to protect a rate-limited API."""
    return value


# One breaker per worker process: after 5 consecutive failures it opens for 30 s, during
# which calls fail at once instead of stacking up timeouts against a service that is down.
shipping_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, name="shipping")


@job_task(
    name="tide.samples.notify_shipping",
    autoretry_for=(httpx.HTTPError, pybreaker.CircuitBreakerError),
    retry_backoff=2,
    retry_backoff_max=120,
    max_retries=8,
)
def notify_shipping(self: Any, order_id: str, url: str, timeout: float = 5.0) -> int:
    """POST an order to the shipping service; retried with backoff while it is down.

    The URL's host must be in ``TIDE_OUTBOUND_HOSTS``; any other fails the job at once."""
    check_url(url)

    @shipping_breaker
    def post() -> httpx.Response:
        response = httpx.post(url, json={"order_id": order_id}, timeout=timeout)
        response.raise_for_status()
        return response

    return post().status_code


@job_task(name="tide.samples.add")
def add(self: Any, x: float, y: float) -> float:
    """x + y: a workflow step."""
    return x + y


@job_task(name="tide.samples.multiply")
def multiply(self: Any, x: float, y: float) -> float:
    """x times y: a workflow step."""
    return x * y


@job_task(name="tide.samples.total")
def total(self: Any, values: list[float]) -> float:
    """Sum of a list: the callback of a chord."""
    return sum(values)


@job_task(name="tide.samples.note_failure")
def note_failure(self: Any, task_id: str, note: str = "handled") -> str:
    """A link_error callback: Celery calls it with the failed task's id."""
    return f"{note} {task_id}"


@job_task(name="tide.samples.fail")
def fail(self: Any, message: str = "failed on purpose") -> None:
    """Raise an error: for failure paths in workflows."""
    raise ValueError(message)
