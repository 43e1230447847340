"""The decision's reason agrees with itself: the worker count it states is the one the
policy recommended, and where a rule other than the slot arithmetic set it (the oldest
task past its target, the work in flight), the reason names that rule."""

from __future__ import annotations

import math

import pytest
from policy_scenarios import make_config, replay, stream

from tide_operator.core.policy import Observation


def decide_after_stream(config_overrides: dict[str, object], last: Observation) -> tuple[str, int]:
    """A minute of a steady stream (so rates are known), then ``last``."""
    config = make_config(**config_overrides)
    history = stream(rate=5.0, service=2.0, start=0.0, seconds=60.0)
    decisions, _, _ = replay(config, [*history, (last.at, last)], current=6)
    final = decisions[-1]
    assert final.demand is not None
    return final.reason, final.demand.recommendation


@pytest.mark.parametrize(
    ("overrides", "last", "says"),
    [
        # The steady stream: 10 slots of offered load, and the wait target asks a worker
        # more than 10 / 2; the reason says the extra is headroom, not arithmetic.
        (
            {"concurrency": 2, "max_wait_seconds": 30},
            Observation(at=65.0, waiting=0, inflight=10, oldest_age=0.0, completed_total=325.0),
            ": {rec} workers of 2 slots with headroom for the wait target",
        ),
        # No rates to go on (no max wait): one worker per task at the backlog target, and the
        # count is the slots' arithmetic, stated with "=".
        (
            {"concurrency": 2, "max_wait_seconds": None},
            Observation(at=65.0, waiting=40, inflight=10, oldest_age=2.0, completed_total=325.0),
            "needs 50 slots = {rec} workers of 2 slots",
        ),
        # The oldest task has waited 45 s against a 30 s target: every task gets a slot, and
        # the reason says so instead of "needs 25.5 slots = 120 workers".
        (
            {"concurrency": 2, "max_wait_seconds": 30},
            Observation(at=65.0, waiting=230, inflight=10, oldest_age=45.0, completed_total=325.0),
            "past the 30s target: {rec} workers of 2 slots",
        ),
    ],
)
def test_reason_states_the_recommended_count_and_why(
    overrides: dict[str, object], last: Observation, says: str
) -> None:
    reason, recommended = decide_after_stream(overrides, last)
    assert says.format(rec=recommended) in reason, reason
    # Never an "= N workers" that is not the recommendation.
    if "= " in reason:
        stated = int(reason.split("= ")[1].split()[0])
        assert stated == recommended, reason


def test_backlog_past_target_names_both_figures() -> None:
    reason, recommended = decide_after_stream(
        {"concurrency": 2, "max_wait_seconds": 30},
        Observation(at=65.0, waiting=230, inflight=10, oldest_age=45.0, completed_total=325.0),
    )
    assert recommended == math.ceil(240 / 2)
    slots = float(reason.split("needs ")[1].split(" slots")[0])
    assert f"({math.ceil(slots / 2 - 1e-9)} workers of 2 slots)" in reason
    assert "oldest has waited 45s" in reason


def test_work_in_flight_keeps_its_workers_and_says_so() -> None:
    # Backlog basis (no max wait): 10 running with a target of 20 per worker would need one
    # worker of 2 slots, but the 10 running tasks keep their 5 workers.
    config = make_config(concurrency=2, target_backlog_per_worker=20)
    decisions, _, _ = replay(
        config, [(0.0, Observation(at=0.0, waiting=0, inflight=10))], current=5
    )
    reason = decisions[-1].reason
    assert decisions[-1].demand is not None
    assert decisions[-1].demand.recommendation == 5
    assert "(1 workers of 2 slots); 5 kept for the work in flight" in reason, reason
