"""Controllers for the simulator: Tide's policy and the autoscalers users pick instead.

Every controller implements ``simulator.Controller``. Tide's runs ``policy.decide`` itself,
the same function the operator and local mode call. The baselines model the *documented
defaults* of the tools, reusing the HPA arithmetic from ``policy`` (``stabilize`` and
``limit_by_behavior``) so that there is one implementation of HPA's behaviour to test:

``keda-default``
    KEDA's Redis list scaler: the metric is the list length (waiting messages only; Celery's
    prefetched and running tasks live in the unacked hash, invisible to it), target
    ``listLength: 5`` as an AverageValue. KEDA polls every 30 s for activation (0 → 1) and
    deactivation (→ 0 once inactive for the 300 s ``cooldownPeriod``); between 1 and N the
    HPA it creates syncs every 15 s with tolerance 0.1, HPA's default step policies and a
    300 s scale-down window. Scale-in is a ReplicaSet's: not-ready pods, then the youngest,
    whatever they are running, with Kubernetes' 30 s grace period.
``keda-tuned``
    The same with ``pollingInterval: 5`` and a 60 s scale-down window.
``hpa-default``
    A plain HPA on the list-length external metric through Prometheus (15 s scrape), min 1,
    default behaviour.
``static``
    A fixed size; by default enough for the trace's busiest minute.
``tide-counts``
    Tide's policy without the completion counter, i.e. sizing on counts and age only, to show
    what the rates buy.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from tide_operator.core.policy import (
    HPA_DEFAULT_BEHAVIOR,
    Behavior,
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
    "POLICIES",
    "HpaAlgorithm",
    "HpaController",
    "KedaController",
    "StaticController",
    "TideController",
    "hpa_replicas_for_average_value",
    "make_controller",
]

POLICIES: tuple[str, ...] = ("tide", "keda-default", "keda-tuned", "hpa-default", "static")
EXTRA_POLICIES: tuple[str, ...] = ("tide-counts",)

HPA_SYNC_PERIOD = 15.0
HPA_TOLERANCE = 0.1
KEDA_LIST_LENGTH = 5


def hpa_replicas_for_average_value(
    *, metric: float, target: float, current: int, tolerance: float = HPA_TOLERANCE
) -> int:
    """HPA's replica calculator for an External metric with an AverageValue target."""
    if current <= 0:
        return current  # HPA does not act on a Deployment scaled to zero
    usage_ratio = metric / (target * current)
    if abs(1.0 - usage_ratio) <= tolerance:
        return current
    return math.ceil(metric / target - 1e-9)


@dataclass
class HpaAlgorithm:
    """The HPA controller's state for one target: recommendations and scale events."""

    behavior: Behavior
    min_replicas: int
    max_replicas: int
    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()
    seeded: bool = False

    def step(self, *, desired: int, current: int, now: float) -> int:
        if not self.seeded:
            # HPA's maybeInitScaleDownStabilizationWindow: seed with the current size.
            self.recommendations = ((now, current),)
            self.seeded = True
        window = max(
            self.behavior.scale_up.stabilization_window_seconds,
            self.behavior.scale_down.stabilization_window_seconds,
        )
        self.recommendations = tuple(r for r in self.recommendations if r[0] > now - window)
        self.events = tuple(e for e in self.events if e[0] > now - 1800)
        stabilized = stabilize(
            behavior=self.behavior,
            recommendations=self.recommendations,
            desired=desired,
            current=current,
            now=now,
        )
        self.recommendations = (*self.recommendations, (now, desired))
        limited = limit_by_behavior(
            behavior=self.behavior,
            events=self.events,
            desired=stabilized,
            current=current,
            now=now,
        )
        result = min(max(limited, self.min_replicas), self.max_replicas)
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
    behavior: Behavior
    grace_period: float
    cooldown_period: float = 300.0
    activation_list_length: int = 0
    list_length: int = KEDA_LIST_LENGTH
    idle_first: bool = False
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
            desired = hpa_replicas_for_average_value(
                metric=snapshot.waiting, target=self.list_length, current=current
            )
            return self.hpa.step(desired=desired, current=current, now=now)
        return current


@dataclass
class HpaController:
    """A plain HPA on the queue-length external metric, read through Prometheus."""

    name: str
    max_replicas: int
    grace_period: float
    target: int = KEDA_LIST_LENGTH
    idle_first: bool = False
    initial_replicas: int = 1
    interval: float = HPA_SYNC_PERIOD
    scrape_interval: float = 15.0
    # Scrapes fall half-way between syncs: the value HPA acts on is 7.5 s old on average.
    scrape_phase: float = 7.5
    hpa: HpaAlgorithm = field(init=False)

    def __post_init__(self) -> None:
        self.hpa = HpaAlgorithm(HPA_DEFAULT_BEHAVIOR, 1, self.max_replicas)

    def evaluate(self, *, snapshot: Snapshot, current: int, now: float) -> int:
        desired = hpa_replicas_for_average_value(
            metric=snapshot.waiting, target=self.target, current=current
        )
        return self.hpa.step(desired=desired, current=current, now=now)


@dataclass
class StaticController:
    name: str
    replicas: int
    grace_period: float
    idle_first: bool = False
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
    """Tide's policy, called exactly as the operator calls it."""

    name: str
    config: PolicyConfig
    grace_period: float
    use_rates: bool = True
    idle_first: bool = True
    initial_replicas: int = 0
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
        observation = Observation(
            at=snapshot.at,
            waiting=snapshot.waiting,
            inflight=snapshot.inflight,
            oldest_age=snapshot.oldest_age,
            completed_total=float(snapshot.completed_total) if self.use_rates else None,
        )
        decision = decide(
            config=self.config,
            state=self.state,
            observation=observation,
            current_replicas=current,
            now=now,
        )
        self.state = decision.state
        self.reasons[decision.reason_code] += 1
        return decision.replicas


def tide_config(settings: SimSettings) -> PolicyConfig:
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
) -> TideController | KedaController | HpaController | StaticController:
    """A fresh controller (they hold state) for one run of ``name`` on ``trace``."""
    grace = settings.baseline_grace_period
    tide_grace = settings.tide_grace_period if settings.tide_grace_period is not None else math.inf
    if name in ("tide", "tide-counts"):
        return TideController(name, tide_config(settings), tide_grace, use_rates=name == "tide")
    if name == "keda-default":
        return KedaController(name, 30.0, settings.max_replicas, HPA_DEFAULT_BEHAVIOR, grace)
    if name == "keda-tuned":
        return KedaController(
            name, 5.0, settings.max_replicas, _with_window(HPA_DEFAULT_BEHAVIOR, 60), grace
        )
    if name == "hpa-default":
        return HpaController(name, settings.max_replicas, grace)
    if name == "static":
        replicas = settings.static_replicas
        if replicas is None:
            replicas = max(1, math.ceil(trace.peak_slots() / settings.concurrency))
        return StaticController(name, min(replicas, settings.max_replicas), grace)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + EXTRA_POLICIES)}")
