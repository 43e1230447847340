"""The baselines reproduce HPA's and KEDA's own arithmetic, case by case from their sources.

Each table row names the case it comes from: a test of the HPA controller
(``pkg/controller/podautoscaler/horizontal_test.go``, ``replica_calculator_test.go``), the
HPA documentation (``behavior`` examples), or KEDA's documented behaviour (polling,
``cooldownPeriod``, the HPA it creates). Values in the replica-calculator rows are the
milli-units the Go tests use.
"""

from __future__ import annotations

from typing import Literal

import pytest

from tide_operator.core.policy import (
    HPA_DEFAULT_BEHAVIOR,
    Behavior,
    ScalingPolicy,
    ScalingRules,
)
from tide_operator.simulation.baselines import (
    MAX_INT32,
    HpaAlgorithm,
    KedaController,
    convert_desired_replicas_with_rules,
    hpa_replicas_for_average_value,
    hpa_replicas_for_value,
    legacy_stabilize,
)
from tide_operator.simulation.simulator import Snapshot

# ------------------------------------------------------------------- the replica calculator

# (source case, target type, metric, target, current, ready, expected)
CALCULATOR_CASES: list[tuple[str, Literal["Value", "AverageValue"], int, int, int, int, int]] = [
    # Value target: ratio 8600/4400 = 1.95 of one ready pod → 2.
    ("replica_calculator_test/TestReplicaCalcScaleUpCMExternal", "Value", 8600, 4400, 1, 1, 2),
    # The same without a metric selector: the same arithmetic.
    (
        "replica_calculator_test/TestReplicaCalcScaleUpCMExternalNoLabels",
        "Value",
        8600,
        4400,
        1,
        1,
        2,
    ),
    # Three pods, two not ready: the ratio scales the one ready pod, 2 (6 if it did not).
    (
        "replica_calculator_test/TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods",
        "Value",
        8600,
        4400,
        3,
        1,
        2,
    ),
    # Value target down: 8600/14334 = 0.6 of 5 → 3.
    ("replica_calculator_test/TestReplicaCalcScaleDownCMExternal", "Value", 8600, 14334, 5, 5, 3),
    # Value target inside the tolerance: 8600/8888 = 0.97 → stay at 3.
    ("replica_calculator_test/TestReplicaCalcToleranceCMExternal", "Value", 8600, 8888, 3, 3, 3),
    # AverageValue up: ceil(8600/2150) = 4 (ratio 1.33 over 3 pods).
    (
        "replica_calculator_test/TestReplicaCalcScaleUpPerPodCMExternal",
        "AverageValue",
        8600,
        2150,
        3,
        3,
        4,
    ),
    # AverageValue down: ceil(8600/2867) = 3.
    (
        "replica_calculator_test/TestReplicaCalcScaleDownPerPodCMExternal",
        "AverageValue",
        8600,
        2867,
        5,
        5,
        3,
    ),
    # AverageValue inside the tolerance: 8600/(2900*3) = 0.99 → stay at 3.
    (
        "replica_calculator_test/TestReplicaCalcTolerancePerPodCMExternal",
        "AverageValue",
        8600,
        2900,
        3,
        3,
        3,
    ),
    # HPA docs, AverageValue: ratio 52/(5*10) = 1.04 is inside the 0.1 tolerance.
    ("hpa docs/tolerance: inside", "AverageValue", 52, 5, 10, 10, 10),
    # Ratio 1.12 is outside: ceil(56/5) = 12.
    ("hpa docs/tolerance: outside", "AverageValue", 56, 5, 10, 10, 12),
    # Ratio 0.92 is inside on the way down too.
    ("hpa docs/tolerance: inside down", "AverageValue", 46, 5, 10, 10, 10),
    # Ratio 0: ceil(0/5) = 0, which minReplicas raises later.
    ("hpa docs/empty list", "AverageValue", 0, 5, 10, 10, 0),
    # The HPA does not act on a target scaled to zero (KEDA owns 0 → 1).
    ("horizontal.go/scaled to zero", "AverageValue", 100, 5, 0, 0, 0),
    # Value target at zero replicas: the ratio itself, rounded up.
    ("replica_calculator.go/getUsageRatioReplicaCount at zero", "Value", 100, 30, 0, 0, 4),
]


@pytest.mark.parametrize(
    ("source", "kind", "metric", "target", "current", "ready", "expected"),
    CALCULATOR_CASES,
    ids=[c[0] for c in CALCULATOR_CASES],
)
def test_replica_calculator(
    source: str,
    kind: str,
    metric: int,
    target: int,
    current: int,
    ready: int,
    expected: int,
) -> None:
    if kind == "Value":
        got = hpa_replicas_for_value(metric=metric, target=target, current=current, ready=ready)
    else:
        got = hpa_replicas_for_average_value(metric=metric, target=target, current=current)
    assert got == expected, source


# (source, ratio as metric/(target*current) with target 100 and current 10, up tol, down tol,
#  expected)
ASYMMETRIC_CASES = [
    # KEP-4951 (behavior.scaleUp.tolerance, 1.33+): a 3% rise passes a 0.02 up-tolerance...
    ("KEP-4951/up tolerance 0.02 passed", 1030, 0.02, 0.1, 11),
    # ... while the same 3% fall stays inside the 0.1 down-tolerance.
    ("KEP-4951/down tolerance 0.1 holds", 970, 0.02, 0.1, 10),
    # A 15% fall leaves it.
    ("KEP-4951/down tolerance 0.1 passed", 850, 0.02, 0.1, 9),
    # A large up-tolerance (0.5) holds a 40% rise that the default would act on.
    ("KEP-4951/up tolerance 0.5 holds", 1400, 0.5, 0.1, 10),
]


@pytest.mark.parametrize(
    ("source", "metric", "up", "down", "expected"),
    ASYMMETRIC_CASES,
    ids=[c[0] for c in ASYMMETRIC_CASES],
)
def test_asymmetric_tolerance(
    source: str, metric: int, up: float, down: float, expected: int
) -> None:
    got = hpa_replicas_for_average_value(
        metric=metric, target=100, current=10, tolerance=down, up_tolerance=up
    )
    assert got == expected, source


def test_max_int32_cap() -> None:
    """horizontal.go computes in int32: a metric asking for more than MaxInt32 gets MaxInt32."""
    assert hpa_replicas_for_average_value(metric=1e12, target=1, current=1) == MAX_INT32
    hpa = HpaAlgorithm(None, 1, MAX_INT32)
    # The legacy limit max(2 * current, 4) is capped too, not overflowed.
    assert hpa.step(desired=MAX_INT32, current=2**30 + 5, now=0.0) == MAX_INT32


# ------------------------------------------------------------------------ the legacy path

# (source, current, desired, min, max, expected)
CONVERT_CASES = [
    ("horizontal_test/TestConvertDesiredReplicasWithRules/within range", 5, 7, 3, 8, 7),
    ("horizontal_test/TestConvertDesiredReplicasWithRules/desired < minReplicas", 3, 1, 2, 8, 2),
    (
        "horizontal_test/TestConvertDesiredReplicasWithRules/1 is minLimit because min < 1",
        1,
        0,
        0,
        10,
        1,
    ),
    (
        "horizontal_test/TestConvertDesiredReplicasWithRules/maxReplicas is the limit",
        20,
        1000,
        1,
        10,
        10,
    ),
    # calculateScaleUpLimit(3) = max(2 * 3, 4) = 6.
    (
        "horizontal_test/TestConvertDesiredReplicasWithRules/scaleUpLimit is the limit",
        3,
        1000,
        1,
        2000,
        6,
    ),
    # From one replica the minimum step (4) wins over doubling.
    ("horizontal.go/calculateScaleUpLimit minimum", 1, 40, 1, 100, 4),
]


@pytest.mark.parametrize(
    ("source", "current", "desired", "low", "high", "expected"),
    CONVERT_CASES,
    ids=[c[0] for c in CONVERT_CASES],
)
def test_convert_desired_replicas_with_rules(
    source: str, current: int, desired: int, low: int, high: int, expected: int
) -> None:
    got = convert_desired_replicas_with_rules(
        current=current, desired=desired, min_replicas=low, max_replicas=high
    )
    assert got == expected, source


NOW = 10_000.0
# (source, recommendations as (seconds ago, size), desired, stabilised, log length)
NORMALIZE_CASES = [
    ("horizontal_test/TestNormalizeDesiredReplicas/empty log", [], 5, 5, 1),
    ("horizontal_test/TestNormalizeDesiredReplicas/stabilize", [(120, 4), (60, 5)], 3, 5, 3),
    ("horizontal_test/TestNormalizeDesiredReplicas/no stabilize", [(120, 1), (60, 2)], 3, 3, 3),
    (
        "horizontal_test/TestNormalizeDesiredReplicas/no stabilize - old recommendations",
        [(600, 10), (540, 9)],
        3,
        3,
        2,
    ),
    (
        "horizontal_test/TestNormalizeDesiredReplicas/stabilize - old recommendations",
        [(600, 10), (60, 4), (120, 5), (540, 9)],
        3,
        5,
        4,
    ),
]


@pytest.mark.parametrize(
    ("source", "history", "desired", "expected", "length"),
    NORMALIZE_CASES,
    ids=[c[0] for c in NORMALIZE_CASES],
)
def test_legacy_stabilization(
    source: str, history: list[tuple[int, int]], desired: int, expected: int, length: int
) -> None:
    log = tuple((NOW - ago, size) for ago, size in history)
    got, new_log = legacy_stabilize(recommendations=log, desired=desired, now=NOW, window=300.0)
    assert (got, len(new_log)) == (expected, length), source


def test_legacy_path_from_one_to_forty() -> None:
    """No behavior: max(2 * current, 4) per sync: 1 → 4 → 8 → 16 → 32 → 40."""
    hpa = HpaAlgorithm(None, 1, 100)
    current, sizes = 1, []
    for sync in range(6):
        current = hpa.step(desired=40, current=current, now=15.0 * sync)
        sizes.append(current)
    assert sizes == [4, 8, 16, 32, 40, 40]


def test_legacy_path_holds_for_300_seconds() -> None:
    """--horizontal-pod-autoscaler-downscale-stabilization 5m: the 40 of t=0 holds until t=300."""
    hpa = HpaAlgorithm(None, 1, 100)
    current = hpa.step(desired=40, current=40, now=0.0)
    for sync in range(1, 20):  # t = 15 … 285
        current = hpa.step(desired=2, current=current, now=15.0 * sync)
        assert current == 40
    # t = 300: the sample at t = 0 is not Before(cutoff = 0), so it still counts ...
    assert hpa.step(desired=2, current=current, now=300.0) == 40
    # ... and at t = 315 it is older: no step limit downwards on the legacy path.
    assert hpa.step(desired=2, current=current, now=315.0) == 2


# --------------------------------------------------------------------- the behavior path


def test_behavior_one_to_forty_takes_four_periods() -> None:
    """HPA docs, default scaleUp: max(+100%, +4 pods) per 15 s: 1 → 5 → 10 → 20 → 40."""
    hpa = HpaAlgorithm(HPA_DEFAULT_BEHAVIOR, 1, 100)
    current, sizes = 1, []
    for sync in range(5):
        current = hpa.step(desired=40, current=current, now=15.0 * sync)
        sizes.append(current)
    assert sizes == [5, 10, 20, 40, 40]


def test_behavior_scale_down_waits_for_the_300s_window() -> None:
    """HPA docs, default scaleDown: a 300 s window; the window is seeded with the size."""
    hpa = HpaAlgorithm(HPA_DEFAULT_BEHAVIOR, 1, 100)
    current = hpa.step(desired=40, current=40, now=0.0)
    for sync in range(1, 20):  # t = 15 … 285: a 40 is still inside the window
        current = hpa.step(desired=2, current=current, now=15.0 * sync)
        assert current == 40
    # t = 300: the last 40 (t = 0) is no longer After(cutoff); 100% per 15 s allows 2.
    assert hpa.step(desired=2, current=current, now=300.0) == 2


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
    # HPA docs, selectPolicy Min picks the smaller step: min(10 + 2, 10 * 1.5) = 12.
    ("hpa docs/scaleUp Min", "up", rules("Min", ("Pods", 2, 60), ("Percent", 50, 60)), 10, 100, 12),
    # Max picks the larger: 15.
    ("hpa docs/scaleUp Max", "up", rules("Max", ("Pods", 2, 60), ("Percent", 50, 60)), 10, 100, 15),
    # HPA docs, Disabled: no scale-up at all.
    ("hpa docs/scaleUp Disabled", "up", rules("Disabled"), 10, 100, 10),
    # Percent down truncates: 10 * (1 - 0.75) = 2.5 → 2 (calculateScaleDownLimit).
    ("horizontal.go/scaleDown Percent", "down", rules("Max", ("Percent", 75, 15)), 10, 1, 2),
    # Down with Max picks the policy allowing the biggest drop: min(10 - 1, 5) = 5.
    (
        "hpa docs/scaleDown Max",
        "down",
        rules("Max", ("Pods", 1, 15), ("Percent", 50, 15)),
        10,
        1,
        5,
    ),
    # Down with Min picks the smallest drop: 9.
    (
        "hpa docs/scaleDown Min",
        "down",
        rules("Min", ("Pods", 1, 15), ("Percent", 50, 15)),
        10,
        1,
        9,
    ),
    # Down Disabled: no scale-down at all.
    ("hpa docs/scaleDown Disabled", "down", rules("Disabled"), 10, 1, 10),
]


@pytest.mark.parametrize(
    ("source", "direction", "rule", "current", "desired", "expected"),
    STEP_CASES,
    ids=[c[0] for c in STEP_CASES],
)
def test_step_policies(
    source: str, direction: str, rule: ScalingRules, current: int, desired: int, expected: int
) -> None:
    quiet = rules("Max", ("Percent", 100000, 15))
    behavior = (
        Behavior(scale_up=rule, scale_down=quiet)
        if direction == "up"
        else Behavior(scale_up=quiet, scale_down=rule)
    )
    hpa = HpaAlgorithm(behavior, 1, 1000)
    if direction == "down":
        # Seed the window at the current size long ago so only the step policy limits.
        hpa.step(desired=current, current=current, now=-10_000.0)
    assert hpa.step(desired=desired, current=current, now=0.0) == expected, source


def test_events_in_the_period_count_against_the_limit() -> None:
    """HPA docs, periodSeconds: +4 pods per 60 s; two moves inside one period share it."""
    behavior = Behavior(
        scale_up=rules("Max", ("Pods", 4, 60)), scale_down=HPA_DEFAULT_BEHAVIOR.scale_down
    )
    hpa = HpaAlgorithm(behavior, 1, 100)
    assert hpa.step(desired=3, current=1, now=0.0) == 3  # +2 of 4
    assert hpa.step(desired=50, current=3, now=15.0) == 5  # +2 left
    assert hpa.step(desired=50, current=5, now=30.0) == 5  # budget spent
    assert hpa.step(desired=50, current=5, now=61.0) == 7  # the first event aged out


def test_preamble_bounds_before_metrics() -> None:
    """horizontal.go reconcileAutoscaler: above max → max, below min → min, at 0 → off."""
    hpa = HpaAlgorithm(None, 2, 5)
    assert hpa.step(desired=3, current=6, now=0.0) == 5
    assert hpa.step(desired=3, current=1, now=15.0) == 2
    assert hpa.step(desired=3, current=0, now=30.0) == 0


# ---------------------------------------------------------------------------------- KEDA


def snap(at: float, waiting: int, *, inflight: int = 0, ready: int | None = None) -> Snapshot:
    return Snapshot(
        at=at,
        waiting=waiting,
        inflight=inflight,
        oldest_age=0.0,
        completed_total=0,
        ready_replicas=ready,
    )


def test_keda_activates_on_polling_and_sleeps_after_cooldown() -> None:
    """KEDA docs: pollingInterval 30 for 0 ↔ 1, cooldownPeriod 300 after the last activity."""
    keda = KedaController("keda-default", 30.0, 50, None)
    assert keda.interval == 15.0
    # t = 15 is an HPA sync but not a polling tick: a sleeping pool stays asleep.
    assert keda.evaluate(snapshot=snap(15, 10), current=0, now=15.0) == 0
    # t = 30 polls: active, 0 → 1.
    assert keda.evaluate(snapshot=snap(30, 10), current=0, now=30.0) == 1
    # The list empties at t = 60 (last active t = 30); the HPA keeps min 1 meanwhile.
    assert keda.evaluate(snapshot=snap(60, 0), current=1, now=60.0) == 1
    assert keda.evaluate(snapshot=snap(315, 0), current=1, now=315.0) == 1
    # t = 330: 300 s since the last active poll: deactivate to zero.
    assert keda.evaluate(snapshot=snap(330, 0), current=1, now=330.0) == 0


def test_keda_default_takes_the_legacy_path() -> None:
    """A ScaledObject without advanced...behavior: its HPA (behavior nil) doubles per sync."""
    keda = KedaController("keda-default", 30.0, 100, None)
    # 200 waiting at a list length of 5 want 40; from 1 the legacy limit allows 4.
    assert keda.evaluate(snapshot=snap(15, 200), current=1, now=15.0) == 4
    assert keda.evaluate(snapshot=snap(30, 200), current=4, now=30.0) == 8


def test_keda_with_behavior_takes_the_behavior_path() -> None:
    """advanced.horizontalPodAutoscalerConfig.behavior set: max(+100%, +4) per 15 s."""
    keda = KedaController("keda-tuned", 5.0, 100, HPA_DEFAULT_BEHAVIOR)
    assert keda.evaluate(snapshot=snap(15, 200), current=1, now=15.0) == 5


def test_keda_sizes_on_list_length_only() -> None:
    """KEDA's Redis scaler reads the list: 40 running tasks, empty list → ceil(0/5) → min 1."""
    keda = KedaController("keda-tuned", 5.0, 50, HPA_DEFAULT_BEHAVIOR)
    busy = snap(0.0, 0, inflight=40)
    assert keda.evaluate(snapshot=busy, current=10, now=0.0) == 10  # seeds the window
    keda.last_active = 301.0
    assert keda.evaluate(snapshot=snap(301.0, 0, inflight=40), current=10, now=315.0) == 1


def test_keda_value_target_scales_ready_pods() -> None:
    """metricType Value: the ratio scales the ready pods (three pods, one ready)."""
    keda = KedaController("keda-value", 15.0, 50, None, target_type="Value")
    # 12 waiting at a target of 5: ratio 2.4 of 1 ready pod → 3 (8 if unready pods counted).
    assert keda.evaluate(snapshot=snap(15, 12, ready=1), current=3, now=15.0) == 3
