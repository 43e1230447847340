"""The baselines reproduce HPA's and KEDA's published arithmetic."""

from __future__ import annotations

import pytest

from tide_operator.core.policy import (
    HPA_DEFAULT_BEHAVIOR,
    Behavior,
    ScalingPolicy,
    ScalingRules,
)
from tide_operator.simulation.baselines import (
    HpaAlgorithm,
    KedaController,
    hpa_replicas_for_average_value,
)
from tide_operator.simulation.simulator import Snapshot


def test_one_to_forty_takes_four_periods() -> None:
    """Default scaleUp is max(+100%, +4 pods) per 15 s: 1 → 5 → 10 → 20 → 40."""
    hpa = HpaAlgorithm(HPA_DEFAULT_BEHAVIOR, 1, 100)
    current, sizes = 1, []
    for sync in range(5):
        current = hpa.step(desired=40, current=current, now=15.0 * sync)
        sizes.append(current)
    assert sizes == [5, 10, 20, 40, 40]


def test_scale_down_waits_for_the_300s_window() -> None:
    hpa = HpaAlgorithm(HPA_DEFAULT_BEHAVIOR, 1, 100)
    current = hpa.step(desired=40, current=40, now=0.0)
    for sync in range(1, 20):  # t = 15 … 285: a 40 is still inside the window
        current = hpa.step(desired=2, current=current, now=15.0 * sync)
        assert current == 40
    # t = 300: the last 40 (t = 0) is no longer after the cutoff; 100% per 15 s allows 2.
    assert hpa.step(desired=2, current=current, now=300.0) == 2


TOLERANCE_CASES = [
    # Ratio 52 / (5 * 10) = 1.04, inside the 0.1 tolerance: no change.
    (52, 10, 10),
    # Ratio 1.12: outside, ceil(56 / 5) = 12.
    (56, 10, 12),
    # Ratio 0.92: inside the tolerance on the way down too.
    (46, 10, 10),
    # Ratio 0: ceil(0 / 5) = 0, which HPA's minReplicas (1) raises later.
    (0, 10, 0),
    # HPA does not act on a target scaled to zero.
    (100, 0, 0),
]


@pytest.mark.parametrize(("metric", "current", "expected"), TOLERANCE_CASES)
def test_average_value_with_tolerance(metric: int, current: int, expected: int) -> None:
    assert hpa_replicas_for_average_value(metric=metric, target=5, current=current) == expected


def rules(select: str, *policies: tuple[str, int, int], window: int = 0) -> ScalingRules:
    return ScalingRules(
        stabilization_window_seconds=window,
        select_policy=select,  # type: ignore[arg-type]
        policies=tuple(
            ScalingPolicy(type=t, value=v, period_seconds=p)  # type: ignore[arg-type]
            for t, v, p in policies
        ),
    )


STEP_CASES = [
    # selectPolicy Min picks the smaller step: min(10 + 2, 10 * 1.5) = 12.
    ("up", rules("Min", ("Pods", 2, 60), ("Percent", 50, 60)), 10, 100, 12),
    # Max picks the larger: 15.
    ("up", rules("Max", ("Pods", 2, 60), ("Percent", 50, 60)), 10, 100, 15),
    # Disabled: no scale-up at all.
    ("up", rules("Disabled"), 10, 100, 10),
    # Percent down truncates: 10 * (1 - 0.75) = 2.5 → 2.
    ("down", rules("Max", ("Percent", 75, 15)), 10, 1, 2),
    # Down with Max picks the policy allowing the biggest drop: min(10 - 1, 5) = 5.
    ("down", rules("Max", ("Pods", 1, 15), ("Percent", 50, 15)), 10, 1, 5),
    # Down with Min picks the smallest drop: 9.
    ("down", rules("Min", ("Pods", 1, 15), ("Percent", 50, 15)), 10, 1, 9),
]


@pytest.mark.parametrize(("direction", "rule", "current", "desired", "expected"), STEP_CASES)
def test_step_policies(
    direction: str, rule: ScalingRules, current: int, desired: int, expected: int
) -> None:
    quiet = rules("Max", ("Percent", 100000, 15))
    behavior = (
        Behavior(scale_up=rule, scale_down=quiet)
        if direction == "up"
        else Behavior(scale_up=quiet, scale_down=rule)
    )
    hpa = HpaAlgorithm(behavior, 1, 1000)
    assert hpa.step(desired=desired, current=current, now=0.0) == expected


def test_events_in_the_period_count_against_the_limit() -> None:
    """+4 pods per 60 s: two moves inside one period share the budget."""
    behavior = Behavior(
        scale_up=rules("Max", ("Pods", 4, 60)), scale_down=HPA_DEFAULT_BEHAVIOR.scale_down
    )
    hpa = HpaAlgorithm(behavior, 1, 100)
    assert hpa.step(desired=3, current=1, now=0.0) == 3  # +2 of 4
    assert hpa.step(desired=50, current=3, now=15.0) == 5  # +2 left
    assert hpa.step(desired=50, current=5, now=30.0) == 5  # budget spent
    assert hpa.step(desired=50, current=5, now=61.0) == 7  # the first event aged out


def snap(at: float, waiting: int) -> Snapshot:
    return Snapshot(at=at, waiting=waiting, inflight=0, oldest_age=0.0, completed_total=0)


def test_keda_activates_on_polling_and_sleeps_after_cooldown() -> None:
    keda = KedaController("keda-default", 30.0, 50, HPA_DEFAULT_BEHAVIOR, 30.0)
    assert keda.interval == 15.0
    # t = 15 is an HPA sync but not a polling tick: a sleeping pool stays asleep.
    assert keda.evaluate(snapshot=snap(15, 10), current=0, now=15.0) == 0
    # t = 30 polls: active, 0 → 1.
    assert keda.evaluate(snapshot=snap(30, 10), current=0, now=30.0) == 1
    # The list empties at t = 60 (last active t = 30); HPA keeps min 1 meanwhile.
    assert keda.evaluate(snapshot=snap(60, 0), current=1, now=60.0) == 1
    assert keda.evaluate(snapshot=snap(315, 0), current=1, now=315.0) == 1
    # t = 330: 300 s since the last active poll: deactivate to zero.
    assert keda.evaluate(snapshot=snap(330, 0), current=1, now=330.0) == 0


def test_keda_sizes_on_list_length_only() -> None:
    """40 running tasks and an empty list: KEDA's HPA wants ceil(0 / 5) → min 1."""
    keda = KedaController("keda-tuned", 5.0, 50, HPA_DEFAULT_BEHAVIOR, 30.0)
    busy = Snapshot(at=0.0, waiting=0, inflight=40, oldest_age=0.0, completed_total=0)
    assert keda.evaluate(snapshot=busy, current=10, now=0.0) == 10  # seeds the window
    later = Snapshot(at=301.0, waiting=0, inflight=40, oldest_age=0.0, completed_total=0)
    keda.last_active = 301.0
    assert keda.evaluate(snapshot=later, current=10, now=315.0) == 1
