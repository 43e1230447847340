"""Fixtures shared by every test folder: waiting on state with a deadline."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

# One hypothesis profile for the suite: enough examples to find the corner cases of a few
# integer inputs, no per-example deadline on a shared 2-core machine, and in CI a fixed
# seed, so a run that landed green is green again (exploration happens on developers'
# machines, where each run draws new examples).
settings.register_profile(
    "tide",
    max_examples=150,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("tide")

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline.

    This waits on observable state (a row, a process, an HTTP answer), never for a fixed
    time: it returns as soon as the state is reached. ``explain`` adds what the system
    under test said about itself (its decisions, its log) to the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}{detail}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait() -> Callable[..., object]:
    return wait_for
