"""Controllers for the simulator: Tide's policy and the autoscalers users pick instead.

Every controller implements ``simulator.Controller``. Tide's runs ``policy.decide`` itself,
the same function the operator and local mode call. The baselines model the *documented
defaults* of the tools. The HPA part is one model, ``HpaAlgorithm``, of the controller's
two code paths (``pkg/controller/podautoscaler/horizontal.go``):

* ``behavior`` set: ``normalizeDesiredReplicasWithBehaviors``, which reuses the policy's
  ``stabilize`` and ``limit_by_behavior`` so there is one implementation of it to test;
* ``behavior`` nil: the *legacy* ``normalizeDesiredReplicas``: a scale-down stabilisation of
  ``--horizontal-pod-autoscaler-downscale-stabilization`` (300 s; the highest
  recommendation of the window, no scale-up window) and a scale-up limit of
  ``max(2 * current, 4)`` per sync. An HPA written without ``behavior`` takes this path, and
  so does the HPA that KEDA creates for a ScaledObject without
  ``advanced.horizontalPodAutoscalerConfig.behavior``.

The replica calculator (``replica_calculator.go``) covers both External target types: an
``AverageValue`` divides the metric by the target per pod of ``status.replicas``; a ``Value``
scales the *ready* pods by the usage ratio. Tolerance may differ per direction
(``behavior.scaleUp/scaleDown.tolerance``, Kubernetes 1.33+), and sizes are capped at
``MaxInt32`` as the controller's arithmetic is.

``keda-default``
    KEDA's Redis list scaler: the metric is the list length (waiting messages only; Celery's
    prefetched and running tasks live in the unacked hash, invisible to it), target
    ``listLength: 5`` as an AverageValue. KEDA polls every 30 s for activation (0 → 1) and
    deactivation (→ 0 once inactive for the 300 s ``cooldownPeriod``); between 1 and N the
    HPA it creates syncs every 15 s with tolerance 0.1 on the legacy path (behavior nil).
    Scale-in is a ReplicaSet's (not-ready, then most recently ready, then newest pods),
    whatever they are running.
``keda-tuned``
    ``pollingInterval: 5`` and ``advanced.horizontalPodAutoscalerConfig.behavior.scaleDown
    .stabilizationWindowSeconds: 60``; with a behavior present the API server fills in the
    rest from the HPA defaults and the controller takes the behavior path.
``hpa-default``
    A plain HPA (no behavior: legacy path) on the list-length external metric through
    Prometheus (15 s scrape), min 1.
``static``
    A fixed size; by default enough for the trace's busiest minute.
``tide-counts``
    Tide's policy without the completion counter, i.e. sizing on counts and age only, to show
    what the rates buy.
``tide-consolidate``
    Tide with ``shutdown.consolidate: true``: a busy worker chosen for scale-in is told to stop
    consuming (Celery's ``cancel_consumer``) instead of being kept or deleted; it finishes its
    tasks with no deadline, is removed once idle, and consumes again (``add_consumer``) before
    a new replica is started. The policy then keeps no replica for in-flight work beyond the
    slots it fills.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

from tide_operator.core.policy import (
    HPA_DEFAULT_BEHAVIOR,
    Behavior,
    Decision,
    Observation,
    PolicyConfig,
    PolicyState,
    ScalingRules,
    decide,
    limit_by_behavior,
    stabilize,
)
from tide_operator.simulation.simulator import SimSettings, Snapshot
from tide_operator.simulation.traces import Trace

__all__ = [
    "EXTRA_POLICIES",
    "HPA_DOWNSCALE_STABILIZATION",
    "MAX_INT32",
    "POLICIES",
    "HpaAlgorithm",
    "HpaController",
    "KedaController",
    "StaticController",
    "TideController",
    "convert_desired_replicas_with_rules",
    "hpa_replicas_for_average_value",
    "hpa_replicas_for_value",
    "legacy_stabilize",
    "make_controller",
]

POLICIES: tuple[str, ...] = ("tide", "keda-default", "keda-tuned", "hpa-default", "static")
EXTRA_POLICIES: tuple[str, ...] = ("tide-counts", "tide-consolidate")

HPA_SYNC_PERIOD = 15.0
HPA_TOLERANCE = 0.1
KEDA_LIST_LENGTH = 5
# kube-controller-manager's --horizontal-pod-autoscaler-downscale-stabilization default.
HPA_DOWNSCALE_STABILIZATION = 300.0
# The legacy path's scale-up limit: max(scaleUpLimitFactor * current, scaleUpLimitMinimum).
HPA_SCALE_UP_LIMIT_FACTOR = 2.0
HPA_SCALE_UP_LIMIT_MINIMUM = 4.0
MAX_INT32 = 2**31 - 1


def _outside(ratio: float, *, tolerance: float, up_tolerance: float | None) -> bool:
    """Whether a usage ratio leaves the tolerance band (asymmetric when ``up`` differs)."""
    up = tolerance if up_tolerance is None else up_tolerance
    return ratio > 1.0 + up or ratio < 1.0 - tolerance


def _cap(value: float) -> int:
    return int(min(math.ceil(value - 1e-9), MAX_INT32))


def hpa_replicas_for_average_value(
    *,
    metric: float,
    target: float,
    current: int,
    tolerance: float = HPA_TOLERANCE,
    up_tolerance: float | None = None,
) -> int:
    """HPA's ``GetExternalPerPodMetricReplicas``: an External metric, AverageValue target.

    ``current`` is the scale's ``status.replicas``; ``tolerance`` is the scale-down (and, if
    ``up_tolerance`` is None, scale-up) tolerance.
    """
    if current <= 0:
        return current  # HPA does not act on a Deployment scaled to zero
    usage_ratio = metric / (target * current)
    if not _outside(usage_ratio, tolerance=tolerance, up_tolerance=up_tolerance):
        return current
    return _cap(metric / target)


def hpa_replicas_for_value(
    *,
    metric: float,
    target: float,
    current: int,
    ready: int,
    tolerance: float = HPA_TOLERANCE,
    up_tolerance: float | None = None,
) -> int:
    """HPA's ``GetExternalMetricReplicas``: an External metric with a Value target.

    The usage ratio scales the *ready* pods (``getUsageRatioReplicaCount``); at zero replicas
    it is the ratio itself, rounded up.
    """
    usage_ratio = metric / target
    if current == 0:
        return _cap(usage_ratio)
    if not _outside(usage_ratio, tolerance=tolerance, up_tolerance=up_tolerance):
        return current
    return _cap(usage_ratio * ready)


def legacy_stabilize(
    *,
    recommendations: tuple[tuple[float, int], ...],
    desired: int,
    now: float,
    window: float,
) -> tuple[int, tuple[tuple[float, int], ...]]:
    """The legacy ``stabilizeRecommendation``: (stabilised size, the new log).

    The highest recommendation not older than the window (``!Before(cutoff)``), this one
    included. The log keeps its old samples, but the last one found older than the window is
    overwritten by this recommendation instead of appending, so it stays bounded.
    """
    cutoff = now - window
    stabilized = desired
    old_index: int | None = None
    for index, (at, recommendation) in enumerate(recommendations):
        if at < cutoff:
            old_index = index
        else:
            stabilized = max(stabilized, recommendation)
    entry = (now, desired)
    if old_index is None:
        return stabilized, (*recommendations, entry)
    log = list(recommendations)
    log[old_index] = entry
    return stabilized, tuple(log)


def convert_desired_replicas_with_rules(
    *, current: int, desired: int, min_replicas: int, max_replicas: int
) -> int:
    """The legacy ``convertDesiredReplicasWithRules``: bounds and max(2 * current, 4).

    With ``minReplicas`` 0 the lower bound is still one: the HPA never scales to zero.
    """
    minimum = max(min_replicas, 1)
    limit = int(
        min(max(HPA_SCALE_UP_LIMIT_FACTOR * current, HPA_SCALE_UP_LIMIT_MINIMUM), MAX_INT32)
    )
    maximum = min(max_replicas, limit)
    if desired < minimum:
        return minimum
    if desired > maximum:
        return maximum
    return desired


@dataclass
class HpaAlgorithm:
    """The HPA controller's state for one target: recommendations and scale events.

    ``behavior=None`` is the legacy path (see the module docstring).
    """

    behavior: Behavior | None
    min_replicas: int
    max_replicas: int
    downscale_stabilization: float = HPA_DOWNSCALE_STABILIZATION
    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()
    seeded: bool = False

    def step(self, *, desired: int, current: int, now: float) -> int:
        """``reconcileAutoscaler`` after the metrics: the size to set (``desired`` is raw)."""
        if current == 0 and self.min_replicas != 0:
            return 0  # autoscaling is disabled for a target scaled to zero
        if current > self.max_replicas:
            return self.max_replicas
        if current < self.min_replicas:
            return self.min_replicas
        if self.behavior is None:
            return self._legacy(desired=desired, current=current, now=now)
        return self._with_behavior(self.behavior, desired=desired, current=current, now=now)

    def _legacy(self, *, desired: int, current: int, now: float) -> int:
        stabilized, self.recommendations = legacy_stabilize(
            recommendations=self.recommendations,
            desired=desired,
            now=now,
            window=self.downscale_stabilization,
        )
        return convert_desired_replicas_with_rules(
            current=current,
            desired=stabilized,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
        )

    def _with_behavior(self, behavior: Behavior, *, desired: int, current: int, now: float) -> int:
        if not self.seeded:
            # HPA's maybeInitScaleDownStabilizationWindow: seed with the current size.
            self.recommendations = ((now, current),)
            self.seeded = True
        window = max(
            behavior.scale_up.stabilization_window_seconds,
            behavior.scale_down.stabilization_window_seconds,
        )
        self.recommendations = tuple(r for r in self.recommendations if r[0] > now - window)
        self.events = tuple(e for e in self.events if e[0] > now - 1800)
        stabilized = stabilize(
            behavior=behavior,
            recommendations=self.recommendations,
            desired=desired,
            current=current,
            now=now,
        )
        self.recommendations = (*self.recommendations, (now, desired))
        limited = limit_by_behavior(
            behavior=behavior,
            events=self.events,
            desired=stabilized,
            current=current,
            now=now,
        )
        result = min(max(limited, self.min_replicas), self.max_replicas, MAX_INT32)
        if result != current:
            self.events = (*self.events, (now, result - current))
        return result


def _with_window(behavior: Behavior, seconds: int) -> Behavior:
    down = behavior.scale_down
    return Behavior(
        scale_up=behavior.scale_up,
        scale_down=ScalingRules(
            stabilization_window_seconds=seconds,
            select_policy=down.select_policy,
            policies=down.policies,
        ),
    )


@dataclass
class KedaController:
    """KEDA ScaledObject on the Redis list length, with the HPA it manages."""

    name: str
    polling_interval: float
    max_replicas: int
    # None: the ScaledObject has no advanced...behavior, so its HPA takes the legacy path.
    behavior: Behavior | None
    cooldown_period: float = 300.0
    activation_list_length: int = 0
    list_length: int = KEDA_LIST_LENGTH
    target_type: Literal["AverageValue", "Value"] = "AverageValue"
    idle_first: bool = False
    consolidates: bool = False
    initial_replicas: int = 0
    scrape_interval: float = 0.0  # KEDA reads Redis itself, fresh on every query
    scrape_phase: float = 0.0
    interval: float = field(init=False)
    last_active: float = 0.0
    hpa: HpaAlgorithm = field(init=False)

    def __post_init__(self) -> None:
        # Both loops fall on a common tick: KEDA's polling and HPA's 15 s sync.
        self.interval = float(math.gcd(int(self.polling_interval), int(HPA_SYNC_PERIOD)))
        self.hpa = HpaAlgorithm(self.behavior, 1, self.max_replicas)

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int:
        tick = round(now / self.interval)
        if tick % round(self.polling_interval / self.interval) == 0:
            active = snapshot.waiting > self.activation_list_length
            if active:
                self.last_active = now
                if current == 0:
                    return 1
            elif current > 0 and now - self.last_active >= self.cooldown_period:
                return 0
        if current > 0 and tick % round(HPA_SYNC_PERIOD / self.interval) == 0:
            if self.target_type == "Value":
                ready = snapshot.ready_replicas if snapshot.ready_replicas is not None else current
                desired = hpa_replicas_for_value(
                    metric=snapshot.waiting, target=self.list_length, current=current, ready=ready
                )
            else:
                desired = hpa_replicas_for_average_value(
                    metric=snapshot.waiting, target=self.list_length, current=current
                )
            return self.hpa.step(desired=desired, current=current, now=now)
        return current


@dataclass
class HpaController:
    """A plain HPA (no behavior) on the queue-length external metric, through Prometheus."""

    name: str
    max_replicas: int
    target: int = KEDA_LIST_LENGTH
    behavior: Behavior | None = None
    idle_first: bool = False
    consolidates: bool = False
    initial_replicas: int = 1
    interval: float = HPA_SYNC_PERIOD
    scrape_interval: float = 15.0
    # Scrapes fall half-way between syncs: the value HPA acts on is 7.5 s old on average.
    scrape_phase: float = 7.5
    hpa: HpaAlgorithm = field(init=False)

    def __post_init__(self) -> None:
        self.hpa = HpaAlgorithm(self.behavior, 1, self.max_replicas)

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int:
        desired = hpa_replicas_for_average_value(
            metric=snapshot.waiting, target=self.target, current=current
        )
        return self.hpa.step(desired=desired, current=current, now=now)


@dataclass
class StaticController:
    name: str
    replicas: int
    idle_first: bool = False
    consolidates: bool = False
    interval: float = 3600.0
    scrape_interval: float = 0.0
    scrape_phase: float = 0.0

    @property
    def initial_replicas(self) -> int:
        return self.replicas

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int:
        return self.replicas


@dataclass
class TideController:
    """Tide's policy, called exactly as the operator's reconcile step calls it."""

    name: str
    config: PolicyConfig
    use_rates: bool = True
    idle_first: bool = True
    consolidates: bool = False
    initial_replicas: int = 0
    # What the busy probe reports on a scale-down: task ages too (True), counts only
    # (False), or the operator has no probe (None: workers not named ``worker@<pod>``).
    probe_ages: bool | None = True
    # The operator scrapes the exporter every polling interval; samples land half-way
    # between evaluations, so the value acted on is half an interval old.
    scrape_interval: float = field(init=False)
    scrape_phase: float = field(init=False)
    interval: float = field(init=False)
    state: PolicyState = field(default_factory=PolicyState)
    reasons: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.interval = self.config.polling_interval
        self.scrape_interval = self.config.polling_interval
        self.scrape_phase = self.config.polling_interval / 2

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int:
        # As the operator's reconcile step (``reconcile/step.py``): the metric source
        # reports the queue, not which workers hold tasks; only a decision to scale down
        # asks the workers (the busy probe: ``inspect active``, with each task's start) and
        # decides again on the same state with what they said. A consolidating operator
        # cordons busy workers instead, so it never asks.
        def decided(observation: Observation) -> Decision:
            return decide(
                config=self.config,
                state=self.state,
                observation=observation,
                current_replicas=current,
                now=now,
            )

        observation = Observation(
            at=snapshot.at,
            waiting=snapshot.waiting,
            inflight=snapshot.inflight,
            oldest_age=snapshot.oldest_age,
            completed_total=float(snapshot.completed_total) if self.use_rates else None,
        )
        decision = decided(observation)
        if decision.replicas < current and not self.consolidates and self.probe_ages is not None:
            decision = decided(
                replace(
                    observation,
                    busy_replicas=snapshot.busy_replicas,
                    oldest_running_age=snapshot.oldest_running_age if self.probe_ages else None,
                )
            )
        self.state = decision.state
        self.reasons[decision.reason_code] += 1
        return decision.replicas


def tide_config(settings: SimSettings) -> PolicyConfig:
    """Tide's WorkerPool defaults, with the comparison's shared figures."""
    return PolicyConfig(
        min_replicas=0,
        max_replicas=settings.max_replicas,
        concurrency=settings.concurrency,
        max_wait_seconds=settings.max_wait,
    )


def make_controller(
    name: str,
    *,
    settings: SimSettings,
    trace: Trace,
    config: PolicyConfig | None = None,
) -> TideController | KedaController | HpaController | StaticController:
    """A fresh controller (they hold state) for one run of ``name`` on ``trace``.

    ``config`` replaces Tide's defaults (``tide recommend`` replays candidate settings).
    """
    if name in ("tide", "tide-counts", "tide-consolidate"):
        return TideController(
            name,
            config or tide_config(settings),
            use_rates=name != "tide-counts",
            consolidates=name == "tide-consolidate",
        )
    if name == "keda-default":
        return KedaController(name, 30.0, settings.max_replicas, None)
    if name == "keda-tuned":
        return KedaController(
            name, 5.0, settings.max_replicas, _with_window(HPA_DEFAULT_BEHAVIOR, 60)
        )
    if name == "hpa-default":
        return HpaController(name, settings.max_replicas)
    if name == "static":
        replicas = settings.static_replicas
        if replicas is None:
            replicas = max(1, math.ceil(trace.peak_slots() / settings.concurrency))
        return StaticController(name, min(replicas, settings.max_replicas))
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + EXTRA_POLICIES)}")
