"""The scaling policy: how many Celery workers a pool should run, and why.

This module is the domain core that the operator, the local mode and the simulator all call.
It is a pure function of its inputs::

    decide(config=..., state=..., observation=..., current_replicas=..., now=...) -> Decision

No I/O, no clock reads (``now`` is an argument), no kopf and no Kubernetes client, so a
decision can be replayed, property-tested and simulated exactly as the operator makes it.

What it owns
------------
``PolicyState`` is the only memory, and the caller threads it from one call to the next
(the operator may keep it in memory or in the resource's status): the recent raw
recommendations (for the stabilisation windows), the recent scale events (for the step
policies' periods), the number of consecutive failed metric reads (for ``fallback``), the
last time any work waited or ran (for the cooldown before zero), the last few observations
(for arrival and completion rates) and the last good estimate of a task's service time.
Every field is immutable; ``decide`` returns a new state.

How a decision is made
----------------------
1. ``paused``: keep the current size and touch nothing.
2. A missing or stale observation is a failure: hold the current size within the bounds (a
   broken metric is not evidence that the queue is empty). Once *more* than
   ``fallback.failureThreshold`` reads in a row failed (KEDA's count), run what
   ``fallback.behavior`` says (KEDA's ``static``, ``currentReplicas``,
   ``currentReplicasIfHigher``, ``currentReplicasIfLower``), never below the replicas that
   held running tasks at the last good read. Both enter the scale-down window, so leaving
   them is smoothed like any drop.
3. Demand from Celery's view of the queue:

   * without rates, every waiting or in-flight task wants a slot:
     ``ceil((waiting + inflight) / targetBacklogPerWorker)`` (ETA tasks are not demand);
   * with a completion counter: the arrival rate by conservation over 90 s,
     ``λ = completion rate + Δ(waiting + inflight) / Δt``, raised to the forecast one lead
     time ahead (Holt's trend and a daily seasonal profile, ``forecast_arrivals``); the
     service time from decayed sums of busy slot-seconds and completions (long tasks are
     seen, tiny ones read as a millisecond; per queue when the read carries each queue's
     figures, and then the mix's mean). The pool is sized by Erlang C for the offered
     load plus the backlog's drain: the fewest replicas keeping P(wait > a quarter of
     ``maxWaitSeconds``) within 5 %, with a hysteresis band down to the fewest that keep up.
     A steady stream reads the same demand whatever the current size, which is what stops
     the feedback loop of sizing on list length;
   * a saturated pool whose queue still grows is sized by its measured throughput;
   * when the oldest message is already older than ``maxWaitSeconds`` the rate model is
     evidently too optimistic, and the policy falls back to one slot per task.

4. Never below the replicas that hold running tasks (the busy probe's count, unless every
   task seen ends well within the grace period, seen over at least one grace period; else
   the slots in-flight work occupies). The busy count is a fact of now, applied after the
   windows of step 5 and not remembered by them (the slot count is): a window that kept
   the busy counts of its 30 s held every worker a spread of long tasks had touched. And
   never zero while anything waits, runs, finished since the last read or is scheduled, or
   before ``cooldownPeriod`` has passed since work last waited or arrived (KEDA's
   deactivation runs from its trigger's last activity). From
   zero, wake when demand exceeds ``activationThreshold`` (on the forecast alone only with
   ``forecast.wakeFromZero``).
5. Stabilise and rate-limit exactly like the HorizontalPodAutoscaler's ``behavior``: the
   result lies between the lowest recommendation of the scale-up window and the highest of
   the scale-down window, then within what the step policies allow over their periods,
   then within ``minReplicas``/``maxReplicas``. ``selectPolicy: Disabled`` blocks its
   direction entirely, 0 ↔ 1 included (KEDA's pause-scale-in/out). The HPA functions are
   public (``stabilize``, ``scale_up_limit``, ``scale_down_limit``) so the simulator's KEDA
   and HPA baselines run the very same arithmetic.

Memory: ``PolicyState`` is bounded per pool: the last minute of observations, the windows'
recommendations and events, a dozen scalars, and the seasonal profile of ``SEASON_BUCKETS``
(288) floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "ACTIVATED",
    "COOLDOWN_TO_ZERO",
    "FALLBACK",
    "HELD",
    "HPA_DEFAULT_BEHAVIOR",
    "METRICS_UNAVAILABLE",
    "PAUSED",
    "REASON_CODES",
    "SCALED_DOWN",
    "SCALED_UP",
    "SEASON_BUCKETS",
    "Behavior",
    "Decision",
    "Demand",
    "Fallback",
    "FallbackBehavior",
    "Forecast",
    "Observation",
    "PolicyConfig",
    "PolicyState",
    "QueueObservation",
    "ScalingPolicy",
    "ScalingRules",
    "decide",
    "forecast_arrivals",
    "limit_by_behavior",
    "restore_season",
    "scale_down_limit",
    "scale_up_limit",
    "season_profile",
    "stabilize",
]

# Reason codes: machine-readable, used as Kubernetes event reasons and in metrics labels.
SCALED_UP: Final = "ScaledUp"
SCALED_DOWN: Final = "ScaledDown"
HELD: Final = "Held"
METRICS_UNAVAILABLE: Final = "MetricsUnavailable"
FALLBACK: Final = "Fallback"
PAUSED: Final = "Paused"
COOLDOWN_TO_ZERO: Final = "CooldownToZero"
ACTIVATED: Final = "Activated"
REASON_CODES: Final = (
    SCALED_UP,
    SCALED_DOWN,
    HELD,
    METRICS_UNAVAILABLE,
    FALLBACK,
    PAUSED,
    COOLDOWN_TO_ZERO,
    ACTIVATED,
)

# Rates are measured over this much observation history. A minute and a half holds enough
# arrivals that their Poisson noise (±4 % at 10/s) stays inside the hysteresis band: with
# 60 s the noise made the pool grow and shrink around the band's edges (diurnal trace,
# seed 0: 1.235 times the floor and 59 reversals within 300 s, against 1.226 and 46 with
# 90 s); a longer window follows a burst's end later (spike: 2.43 times the floor with
# 120 s, 2.71 with 180 s, against 2.32).
RATE_WINDOW_SECONDS: Final = 90.0
# Below this many completions in the window the service-time estimate is mostly noise, and
# the last good estimate (or the backlog rule) is used instead.
MIN_COMPLETIONS_FOR_RATES: Final = 5
# The backlog is sized to drain within this multiple of the maximum wait. A tighter horizon
# (half the maximum wait) bought waits of a second instead of two at 4% more replicas on the
# diurnal trace; a backlog old enough to matter is caught by the oldest-age rule instead.
DRAIN_FRACTION_OF_MAX_WAIT: Final = 2.0
URGENT_DRAIN_FRACTION: Final = 0.5
# A backlog whose oldest task has waited longer than this fraction of the maximum wait is
# urgent (a cold start, a burst) and drains within ``URGENT_DRAIN_FRACTION`` of it.
URGENT_AGE_FRACTION: Final = 0.1
# Erlang-C sizing (see ``_replicas_for_wait``): the pool is sized so that at most this share
# of tasks waits longer than this fraction of ``maxWaitSeconds`` (the high level), and grows
# again only when more than the low level's share would (hysteresis, as the two headrooms).
# A quarter: with a tenth, the Erlang headroom above the offered load was the largest item
# of the policy's cost over the floor (0.057 of the floor on the diurnal trace, 0.094 on the
# heavy-tailed mix with consolidation) for a p95 wait of 1.3 s against a 60 s target. A
# quarter took the diurnal trace from 1.247 to 1.235 times the floor (seed 0) and the mix
# from 1.324 to 1.304; half saved 0.005 more and reversed half as often again.
WAIT_BUDGET_FRACTION: Final = 0.25
WAIT_SHARE_HIGH: Final = 0.05
# 1.0: grow only when the pool cannot keep up with the offered load and the backlog at all.
# Between that and the high level, the queue absorbs the noise (bench/results/simulator).
WAIT_SHARE_LOW: Final = 1.0
# A busy replica may be drained when every task the pool was seen to run finishes well
# inside the grace period: this fraction of it.
SAFE_DRAIN_FRACTION: Final = 0.5
# The seasonal profile's resolution: 288 buckets of five minutes for a one-day season. It is
# the bound of the forecast's memory: 288 floats per pool (about 9 KiB as a Python tuple).
SEASON_BUCKETS: Final = 288
# Weight of the latest season in a bucket's profile (the rest is the earlier seasons').
SEASON_WEIGHT: Final = 0.5
# Time constants of the decayed sums: service time, arrival level, arrival trend.
SERVICE_TIME_CONSTANT: Final = 600.0
LEVEL_TIME_CONSTANT: Final = 60.0
TREND_TIME_CONSTANT: Final = 300.0
# Saturation: every slot busy and more than this many rounds of the slots waiting. Ten keeps
# the rule out of ordinary queueing (the diurnal trace never triggers it) and in floods of
# tiny tasks, where an error of a percent in the service time hides a growing queue.
SATURATION_QUEUE: Final = 10.0
# The shortest service time the figures can resolve (see ``_demand``).
MIN_SERVICE_TIME: Final = 1e-3
_EPSILON: Final = 1e-9


# --------------------------------------------------------------------------- configuration


class _SpecModel(BaseModel):
    """Frozen, camelCase-aliased, strict about unknown keys (a typo must not pass silently)."""

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_camel, extra="forbid"
    )


class ScalingPolicy(_SpecModel):
    """One HPA step policy: at most ``value`` pods (or percent) per ``periodSeconds``."""

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    # HPA caps the period at 30 minutes; the same bound keeps the event history small.
    period_seconds: int = Field(gt=0, le=1800)


class ScalingRules(_SpecModel):
    """HPA's ``HPAScalingRules``: a stabilisation window and step policies for one direction."""

    stabilization_window_seconds: int = Field(default=0, ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: tuple[ScalingPolicy, ...] = ()

    @model_validator(mode="after")
    def _policies_present(self) -> ScalingRules:
        if self.select_policy != "Disabled" and not self.policies:
            raise ValueError(
                "policies must list at least one {type, value, periodSeconds} "
                "unless selectPolicy is Disabled"
            )
        return self


def _tide_scale_up() -> ScalingRules:
    # Tide reacts at once (no window) and lets a pool quadruple, or grow by ten pods,
    # every 15 s: a backlog is real work, so the limits only guard against a metric glitch.
    return ScalingRules(
        stabilization_window_seconds=0,
        select_policy="Max",
        policies=(
            ScalingPolicy(type="Percent", value=300, period_seconds=15),
            ScalingPolicy(type="Pods", value=10, period_seconds=15),
        ),
    )


def _tide_scale_down() -> ScalingRules:
    # One minute of stabilisation instead of HPA's five: the demand estimate already carries
    # headroom and rates averaged over a minute, so a longer window only buys idle pods.
    # Removing everything surplus at once is safe because Tide never goes below in-flight
    # work and removes idle workers first.
    return ScalingRules(
        stabilization_window_seconds=30,
        select_policy="Max",
        policies=(ScalingPolicy(type="Percent", value=100, period_seconds=15),),
    )


class Behavior(_SpecModel):
    """``behavior.scaleUp`` and ``behavior.scaleDown``, as in ``autoscaling/v2``."""

    scale_up: ScalingRules = Field(default_factory=_tide_scale_up)
    scale_down: ScalingRules = Field(default_factory=_tide_scale_down)


#: The HorizontalPodAutoscaler's documented default behaviour (autoscaling/v2).
HPA_DEFAULT_BEHAVIOR: Final = Behavior(
    scale_up=ScalingRules(
        stabilization_window_seconds=0,
        select_policy="Max",
        policies=(
            ScalingPolicy(type="Pods", value=4, period_seconds=15),
            ScalingPolicy(type="Percent", value=100, period_seconds=15),
        ),
    ),
    scale_down=ScalingRules(
        stabilization_window_seconds=300,
        select_policy="Max",
        policies=(ScalingPolicy(type="Percent", value=100, period_seconds=15),),
    ),
)


FallbackBehavior = Literal[
    "static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower"
]


class Fallback(_SpecModel):
    """KEDA's ``fallback``: what to run once more than ``failureThreshold`` reads failed.

    As in KEDA (``pkg/fallback``), the fallback starts when the count of consecutive failures
    *exceeds* the threshold: ``failureThreshold: 3`` falls back on the fourth failed read.
    ``behavior`` is KEDA's: ``static`` runs ``replicas``; ``currentReplicas`` keeps the
    current size; ``currentReplicasIfHigher`` keeps it if it is above ``replicas`` (else
    ``replicas``); ``currentReplicasIfLower`` keeps it if it is below (else ``replicas``).
    Tide adds one rule to KEDA's: never below the replicas that held running tasks at the last
    good read, because a metric outage is no reason to cut work in progress.
    """

    failure_threshold: int = Field(ge=0, le=1000)
    # At least one: an unreadable metric must never take a pool to zero.
    replicas: int = Field(ge=1)
    behavior: FallbackBehavior = "static"


class Forecast(_SpecModel):
    """Capacity ahead of demand, from the pool's own history (see ``decide``)."""

    enabled: bool = Field(
        default=True,
        description="Size for the arrivals forecast one lead time ahead (trend and season).",
    )
    lead_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How far ahead capacity must be ready: a worker's start-up plus a poll.",
    )
    season_seconds: int = Field(
        default=86400,
        ge=3600,
        le=7 * 86400,
        description="Length of the repeating cycle the seasonal profile learns (a day).",
    )
    wake_from_zero: bool = Field(
        default=False,
        description="Start a worker from zero on the forecast alone (else only on work).",
    )

    @model_validator(mode="after")
    def _wake_needs_forecast(self) -> Forecast:
        if self.wake_from_zero and not self.enabled:
            raise ValueError("forecast.wakeFromZero needs forecast.enabled")
        return self


class PolicyConfig(_SpecModel):
    """The scaling part of a WorkerPool spec, validated. Field names follow HPA and KEDA."""

    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=10, ge=1)
    concurrency: int = Field(default=1, ge=1, description="task slots per replica")
    target_backlog_per_worker: int | None = Field(
        default=None, ge=1, description="tasks one replica should hold; default = concurrency"
    )
    max_wait_seconds: float | None = Field(
        default=60.0, gt=0, description="target for the age of the oldest waiting message"
    )
    activation_threshold: int = Field(default=0, ge=0)
    # 60 s rather than KEDA's 300 s: waking from zero costs one pod start (tens of seconds)
    # of latency for the first task of the next burst, which fits inside a typical maximum
    # wait, while every minute of cooldown is a minute of an idle pod after every burst.
    cooldown_period: float = Field(default=60.0, ge=0)
    polling_interval: float = Field(default=5.0, gt=0)
    behavior: Behavior = Field(default_factory=Behavior)
    fallback: Fallback | None = None
    forecast: Forecast = Field(default_factory=Forecast)
    paused: bool = False
    # From the WorkerPool's ``shutdown``: how long a removed worker may finish its tasks, and
    # the longest task the user declares. They decide whether a busy replica may be drained.
    grace_period_seconds: float = Field(default=300.0, gt=0)
    longest_task_seconds: float | None = Field(default=None, gt=0)
    stale_after_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas "
                f"({self.max_replicas})"
            )
        if self.fallback is not None and self.fallback.replicas > self.max_replicas:
            raise ValueError(
                f"fallback.replicas ({self.fallback.replicas}) must not exceed maxReplicas "
                f"({self.max_replicas})"
            )
        if self.stale_after_seconds < self.polling_interval:
            raise ValueError(
                f"staleAfterSeconds ({self.stale_after_seconds}) must be at least "
                f"pollingInterval ({self.polling_interval}), or every read would be stale"
            )
        return self

    @property
    def backlog_per_worker(self) -> int:
        return self.target_backlog_per_worker or self.concurrency


# --------------------------------------------------------------------- observations, state


@dataclass(frozen=True, slots=True)
class QueueObservation:
    """One queue's figures within an observation, for service times learnt per queue."""

    name: str
    waiting: int
    inflight: int
    completed_total: float | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One successful read of a pool's queues, taken at ``at`` (seconds, caller's clock)."""

    at: float
    waiting: int
    inflight: int
    scheduled: int = 0
    oldest_age: float | None = None
    # Monotonic counter of finished tasks; optional. With it the policy uses rates.
    completed_total: float | None = None
    # Replicas holding at least one running task (the busy probe); optional. Without it the
    # in-flight floor can only count slots.
    busy_replicas: int | None = None
    # How long the longest-running task has run (the busy probe's task start times).
    oldest_running_age: float | None = None
    # The same figures per queue (a pool of several queues, each with its counter): service
    # times are then learnt per queue and the offered load is the sum over queues.
    queues: tuple[QueueObservation, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What ``decide`` remembers between calls. Start with ``PolicyState()``."""

    initialised: bool = False
    # (time, raw recommendation), for the stabilisation windows.
    recommendations: tuple[tuple[float, int], ...] = ()
    # (time, signed replica change), for the step policies' periods.
    scale_events: tuple[tuple[float, int], ...] = ()
    failures: int = 0
    last_active_at: float | None = None
    observations: tuple[Observation, ...] = ()
    service_time: float | None = None
    # The in-flight floor of the last good read: fallback never goes below it.
    last_floor: int = 0
    # The longest a task was seen running (the busy probe), for the drain-safety rule; None
    # until the probe has reported task ages.
    longest_running: float | None = None
    # When the probe first reported task ages: they are evidence only once they cover a
    # grace period (a task that outlasts it would have been seen past the limit by then).
    ages_since: float | None = None
    # Exponentially decayed sums for the service time: slot-seconds busy and completions.
    busy_seconds: float = 0.0
    completions: float = 0.0
    # The same sums per queue: (queue, busy slot-seconds, completions), one entry per queue.
    queue_sums: tuple[tuple[str, float, float], ...] = ()
    # Holt's linear trend on the arrival rate: level (tasks/s), slope (tasks/s per s).
    arrival_level: float | None = None
    arrival_trend: float = 0.0
    rate_at: float | None = None
    # The seasonal profile: mean arrival rate per bucket of the season (-1: never seen),
    # and the bucket being filled now (index, arrivals counted, seconds covered).
    season: tuple[float, ...] = ()
    bucket: int = -1
    bucket_arrivals: float = 0.0
    bucket_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Demand:
    """The figures a decision was computed from, for status, events and the simulator."""

    waiting: int
    inflight: int
    scheduled: int
    oldest_age: float | None
    arrival_rate: float | None
    service_time: float | None
    needed_slots: float
    recommendation: int
    inflight_floor: int
    basis: Literal["rates", "backlog"]
    forecast_rate: float | None = None
    # What the scale-down window remembers: the recommendation before the busy count (the
    # demand and the slots in flight); the busy count is a fact of now, applied after it.
    sized: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason_code: str
    reason: str
    state: PolicyState
    demand: Demand | None = field(default=None)


# ------------------------------------------------------------------ HPA arithmetic (shared)


def _change_in_period(
    events: tuple[tuple[float, int], ...], *, period: float, now: float
) -> tuple[int, int]:
    """Replicas added and removed by events strictly inside ``(now - period, now]``."""
    cutoff = now - period
    added = removed = 0
    for at, change in events:
        # HPA counts events whose timestamp is After(cutoff): strictly newer.
        if at > cutoff:
            if change > 0:
                added += change
            else:
                removed -= change
    return added, removed


def scale_up_limit(
    *, rules: ScalingRules, current: int, events: tuple[tuple[float, int], ...], now: float
) -> int:
    """The most replicas the scale-up policies allow now (HPA's calculateScaleUpLimit)."""
    if rules.select_policy == "Disabled":
        return current
    pick = max if rules.select_policy == "Max" else min
    result: int | None = None
    for policy in rules.policies:
        added, removed = _change_in_period(events, period=policy.period_seconds, now=now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(start * (1 + policy.value / 100) - _EPSILON)
        result = proposed if result is None else pick(result, proposed)
    assert result is not None  # validated: policies exist unless Disabled
    return result


def scale_down_limit(
    *, rules: ScalingRules, current: int, events: tuple[tuple[float, int], ...], now: float
) -> int:
    """The fewest replicas the scale-down policies allow now (HPA's calculateScaleDownLimit)."""
    if rules.select_policy == "Disabled":
        return current
    # Scaling down, the policy allowing the largest change ("Max") yields the lowest count.
    pick = min if rules.select_policy == "Max" else max
    result: int | None = None
    for policy in rules.policies:
        added, removed = _change_in_period(events, period=policy.period_seconds, now=now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            proposed = int(start * (1 - policy.value / 100) + _EPSILON)
        result = proposed if result is None else pick(result, proposed)
    assert result is not None
    return result


def stabilize(
    *,
    behavior: Behavior,
    recommendations: tuple[tuple[float, int], ...],
    desired: int,
    current: int,
    now: float,
) -> int:
    """HPA's stabilizeRecommendationWithBehaviors: clamp ``current`` between the window bounds.

    Scale-up may go no higher than the lowest recommendation in the scale-up window, and
    scale-down no lower than the highest in the scale-down window; ``desired`` (this call's
    raw recommendation) belongs to both windows.
    """
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up = down = desired
    for at, recommendation in recommendations:
        if at > up_cutoff:
            up = min(up, recommendation)
        if at > down_cutoff:
            down = max(down, recommendation)
    return min(max(current, up), down)


def limit_by_behavior(
    *,
    behavior: Behavior,
    events: tuple[tuple[float, int], ...],
    desired: int,
    current: int,
    now: float,
) -> int:
    """Bound a move from ``current`` to ``desired`` by the step policies."""
    if desired > current:
        # HPA's safeguard: a limit below the current size never forces a scale-down.
        limit = max(
            scale_up_limit(rules=behavior.scale_up, current=current, events=events, now=now),
            current,
        )
        return min(desired, limit)
    if desired < current:
        limit = min(
            scale_down_limit(rules=behavior.scale_down, current=current, events=events, now=now),
            current,
        )
        return max(desired, limit)
    return desired


# ----------------------------------------------------------------------------- the policy


def _ceil(value: float) -> int:
    # Floating-point sums like 0.1 * 30 must not round 3.0000000001 up to 4.
    return max(0, math.ceil(value - _EPSILON))


def _rates(
    observations: tuple[Observation, ...],
) -> tuple[float, float, float] | None:
    """(arrival rate, completion rate, completions) over the window, or None."""
    first, last = observations[0], observations[-1]
    elapsed = last.at - first.at
    if elapsed <= 0 or first.completed_total is None or last.completed_total is None:
        return None
    completions = last.completed_total - first.completed_total
    completion_rate = completions / elapsed
    # Conservation: what arrived is what finished plus what the queue and slots gained.
    gained = (last.waiting + last.inflight) - (first.waiting + first.inflight)
    arrival_rate = max(0.0, completion_rate + gained / elapsed)
    return arrival_rate, completion_rate, completions


def _decay(dt: float, constant: float) -> float:
    return math.exp(-dt / constant) if constant > 0 else 0.0


def _season_bucket(at: float, season: int) -> int:
    return int((at % season) // (season / SEASON_BUCKETS)) % SEASON_BUCKETS


def _learn(
    state: PolicyState, previous: Observation, observation: Observation, *, config: PolicyConfig
) -> PolicyState:
    """Fold one interval between two reads into the service-time sums, trend and season.

    All of it is a few floats per pool plus the seasonal profile (``SEASON_BUCKETS`` floats),
    so the memory per pool is bounded whatever the traffic.
    """
    dt = observation.at - previous.at
    if (
        dt <= 0
        or observation.completed_total is None
        or previous.completed_total is None
        or observation.completed_total < previous.completed_total
    ):
        return state
    completed = observation.completed_total - previous.completed_total
    present = observation.waiting + observation.inflight
    arrived = max(0.0, completed + present - (previous.waiting + previous.inflight))

    # Service time: slot-seconds busy over completions, both decayed with a time constant
    # long enough to see several completions of long tasks. Little's law on one minute read
    # ~95 s for 480 s tasks because a minute rarely holds one completion of them; decayed
    # sums over ten minutes (or five service times) do not have that blind spot.
    constant = max(SERVICE_TIME_CONSTANT, 5 * (state.service_time or 0.0))
    keep = _decay(dt, constant)
    busy_seconds = state.busy_seconds * keep + (previous.inflight + observation.inflight) / 2 * dt
    completions = state.completions * keep + completed
    queue_sums = _learn_queues(state, previous, observation, dt=dt)

    # Holt's linear trend on the arrival rate.
    rate = arrived / dt
    if state.arrival_level is None:
        level, trend = rate, 0.0
    else:
        level = state.arrival_level + (1 - _decay(dt, LEVEL_TIME_CONSTANT)) * (
            rate - state.arrival_level
        )
        slope = (level - state.arrival_level) / dt
        trend = state.arrival_trend + (1 - _decay(dt, TREND_TIME_CONSTANT)) * (
            slope - state.arrival_trend
        )

    # The season: arrivals per bucket; a bucket's mean rate enters the profile when the
    # next bucket starts, weighted against what earlier seasons said about it.
    season = state.season or tuple([-1.0] * SEASON_BUCKETS)
    period = config.forecast.season_seconds
    bucket = _season_bucket(observation.at, period)
    bucket_arrivals, bucket_seconds = state.bucket_arrivals, state.bucket_seconds
    if bucket != state.bucket:
        if state.bucket >= 0 and bucket_seconds >= period / SEASON_BUCKETS / 2:
            mean = bucket_arrivals / bucket_seconds
            old = season[state.bucket]
            value = mean if old < 0 else SEASON_WEIGHT * mean + (1 - SEASON_WEIGHT) * old
            season = (*season[: state.bucket], value, *season[state.bucket + 1 :])
        bucket_arrivals = bucket_seconds = 0.0
    return replace(
        state,
        busy_seconds=busy_seconds,
        completions=completions,
        queue_sums=queue_sums,
        arrival_level=level,
        arrival_trend=trend,
        rate_at=observation.at,
        season=season,
        bucket=bucket,
        bucket_arrivals=bucket_arrivals + arrived,
        bucket_seconds=bucket_seconds + dt,
    )


def _learn_queues(
    state: PolicyState, previous: Observation, observation: Observation, *, dt: float
) -> tuple[tuple[str, float, float], ...]:
    """Per-queue decayed sums of busy slot-seconds and completions (see ``_learn``).

    Only for a pool of several queues whose reads carry each queue's counter; a queue whose
    counter went backwards or vanished keeps its decayed sums and adds nothing this time.
    """
    if len(observation.queues) < 2:
        return ()
    before = {q.name: q for q in previous.queues}
    sums = {name: (busy, done) for name, busy, done in state.queue_sums}
    learnt = []
    for queue in observation.queues:
        busy, done = sums.get(queue.name, (0.0, 0.0))
        own = busy / done if done >= MIN_COMPLETIONS_FOR_RATES else 0.0
        keep = _decay(dt, max(SERVICE_TIME_CONSTANT, 5 * own))
        busy, done = busy * keep, done * keep
        last = before.get(queue.name)
        if (
            last is not None
            and last.completed_total is not None
            and queue.completed_total is not None
            and queue.completed_total >= last.completed_total
        ):
            busy += (last.inflight + queue.inflight) / 2 * dt
            done += queue.completed_total - last.completed_total
        learnt.append((queue.name, busy, done))
    return tuple(learnt)


def _mix_service_time(state: PolicyState, pooled: float | None) -> float | None:
    """The mean service time of the current mix: sum of λ_q·S_q over the queues, over λ.

    A pool of several queues whose tasks differ (1 s emails, 60 s reports) sees its pooled
    service time drift for ten minutes after the mix shifts; with each queue's own S the
    offered load follows the mix within the rate window. None without per-queue
    figures (the pooled estimate is used).
    """
    if not state.observations or len(state.observations) < 2 or not state.queue_sums:
        return None
    first, last = state.observations[0], state.observations[-1]
    elapsed = last.at - first.at
    if elapsed <= 0 or len(last.queues) < 2:
        return None
    start = {q.name: q for q in first.queues}
    sums = {name: (busy, done) for name, busy, done in state.queue_sums}
    total_rate = offered = 0.0
    for queue in last.queues:
        then = start.get(queue.name)
        if then is None or then.completed_total is None or queue.completed_total is None:
            return None
        finished = queue.completed_total - then.completed_total
        if finished < 0:
            return None
        gained = (queue.waiting + queue.inflight) - (then.waiting + then.inflight)
        rate = max(0.0, (finished + gained) / elapsed)
        busy, done = sums.get(queue.name, (0.0, 0.0))
        if done >= MIN_COMPLETIONS_FOR_RATES:
            own: float | None = max(busy / done, MIN_SERVICE_TIME)
        else:
            own = pooled  # a queue not measured yet counts at the pool's mean
        if own is None:
            return None
        total_rate += rate
        offered += rate * own
    if total_rate <= 0:
        return None
    return offered / total_rate


def _seasonal(state: PolicyState, at: float, *, period: int) -> float | None:
    """The profile's rate at ``at``, linear between bucket centres; None where unseen."""
    if not state.season:
        return None
    width = period / SEASON_BUCKETS
    position = (at % period) / width - 0.5
    left = math.floor(position)
    weight = position - left
    a, b = state.season[left % SEASON_BUCKETS], state.season[(left + 1) % SEASON_BUCKETS]
    if a < 0 or b < 0:
        return None
    return (1 - weight) * a + weight * b


def forecast_arrivals(state: PolicyState, config: PolicyConfig, *, now: float) -> float | None:
    """Arrivals per second expected one lead time ahead, or None without history.

    The trend extrapolates the smoothed rate; the season adds what the profile says changes
    between now and then (additively, so a busier or quieter day than the profile keeps its
    own level). The higher of the two is used: a forecast is there to have workers ready, and
    the scale-down window, not the forecast, is what holds capacity on the way down.
    """
    if not config.forecast.enabled or state.arrival_level is None:
        return None
    lead = config.forecast.lead_seconds
    ahead = max(0.0, state.arrival_level + state.arrival_trend * lead)
    period = config.forecast.season_seconds
    then, current = (
        _seasonal(state, now + lead, period=period),
        _seasonal(state, now, period=period),
    )
    if then is not None and current is not None:
        ahead = max(ahead, state.arrival_level + then - current)
    return ahead


def season_profile(state: PolicyState) -> tuple[float, ...] | None:
    """The seasonal profile to store (rates to 0.1 ms⁻¹ precision), None before any bucket."""
    if not state.season or all(v < 0 for v in state.season):
        return None
    return tuple(round(v, 4) if v >= 0 else -1.0 for v in state.season)


def restore_season(
    state: PolicyState,
    profile: tuple[float, ...] | list[float],
    *,
    season_seconds: int,
    config: PolicyConfig,
) -> PolicyState:
    """A fresh state that starts from a stored profile (an operator restart).

    Only a profile of the same season length and resolution is taken; anything else (the
    spec's ``forecast.seasonSeconds`` changed) is ignored and the profile is learnt anew.
    """
    if (
        state.initialised
        or season_seconds != config.forecast.season_seconds
        or len(profile) != SEASON_BUCKETS
    ):
        return state
    return replace(state, season=tuple(float(v) if v >= 0 else -1.0 for v in profile))


def _remember(
    state: PolicyState, observation: Observation, *, now: float, config: PolicyConfig
) -> PolicyState:
    kept = tuple(o for o in state.observations if o.at >= now - RATE_WINDOW_SECONDS)
    if (
        observation.completed_total is None
        or (kept and kept[-1].completed_total is None)
        or (
            kept
            and kept[-1].completed_total is not None
            and observation.completed_total < kept[-1].completed_total
        )
    ):
        # A counter that went backwards was reset (exporter restart): the old history no
        # longer subtracts from the new, so rates start over.
        kept = ()
    if kept and kept[-1].at >= observation.at:
        # The same scrape read twice adds nothing and would divide by zero.
        return replace(state, observations=kept)
    if state.observations:
        state = _learn(state, state.observations[-1], observation, config=config)
    return replace(state, observations=(*kept, observation))


def _drain_is_safe(config: PolicyConfig, state: PolicyState, *, now: float) -> bool:
    """Whether a busy replica's tasks are known to finish well within the grace period.

    Known means evidence: the user's declared ``longestTaskSeconds``, or task ages from the
    busy probe, reported for at least one grace period, together with a measured service
    time. Without either, a busy replica is treated as holding a task that may outlast its
    grace period. Ages seen for less than a grace period are no evidence: a pool whose first
    long task has run less than half of it would drain that task and cut it.
    """
    limit = config.grace_period_seconds * SAFE_DRAIN_FRACTION
    declared = config.longest_task_seconds
    if declared is not None and declared > limit:
        return False
    if state.longest_running is not None and state.longest_running > limit:
        return False
    if declared is not None:
        return True
    return (
        state.longest_running is not None
        and state.ages_since is not None
        and now - state.ages_since >= config.grace_period_seconds
        and state.service_time is not None
        and state.service_time <= limit
    )


def _in_flight_floor(
    config: PolicyConfig, state: PolicyState, obs: Observation, *, now: float
) -> int:
    """Replicas that must stay because they hold running tasks.

    With the busy probe's count, every replica holding a task stays unless its tasks are
    known to finish well within the grace period (every task the pool was seen to run, or
    declared ``longestTaskSeconds``, within half of it): the operator marks idle workers
    first (pod-deletion-cost), so only idle ones go, and no task can outlast its grace
    period. Counting slots instead (``inflight / concurrency``) lets the ReplicaSet take a
    replica that holds one long task while others hold several, which is how a slot floor
    cut tasks. When tasks are short, draining a busy replica costs only the seconds its
    tasks have left, and the slot count is the floor: tasks spread over every replica by
    the broker's first-come first-served delivery would otherwise pin the whole pool.
    """
    slots = _ceil(max(0, obs.inflight) / config.concurrency)
    if obs.busy_replicas is None or _drain_is_safe(config, state, now=now):
        return slots
    return max(slots, max(0, obs.busy_replicas))


def _erlang_c(slots: int, offered: float) -> float:
    """Probability that a task waits in an M/M/c queue (Erlang's C formula)."""
    if offered <= 0:
        return 0.0
    if offered >= slots:
        return 1.0
    blocking = 1.0
    for k in range(1, slots + 1):  # Erlang B by its stable recursion
        blocking = offered * blocking / (k + offered * blocking)
    return slots * blocking / (slots - offered * (1 - blocking))


def _replicas_for_wait(
    *,
    offered: float,
    service_time: float,
    budget: float,
    share: float,
    per_replica: int,
    cap: int,
) -> int:
    """The fewest replicas that keep P(wait > budget) within ``share`` (M/M/c tail).

    An M/M/c queue's wait is zero with probability 1 - C and exponential with rate
    (c - a)/S otherwise, so P(wait > t) = C·exp(-(c - a)·t/S). Sizing on the wait the user
    allows, instead of a fixed square-root headroom, lets a large pool run close to full
    (its queue stays short) and gives a small one the slack it needs.
    """
    if offered <= 0:
        return 0  # nothing offered: the cooldown, not the sizing, decides about the last one
    replicas = max(1, _ceil(offered / per_replica))
    while replicas < cap:
        slots = replicas * per_replica
        if slots > offered:
            tail = _erlang_c(slots, offered) * math.exp(-(slots - offered) * budget / service_time)
            if tail <= share:
                break
        replicas += 1
    return replicas


def _demand(
    config: PolicyConfig, state: PolicyState, obs: Observation, *, current: int, now: float
) -> tuple[Demand, float | None]:
    waiting, inflight = max(0, obs.waiting), max(0, obs.inflight)
    per_replica = config.concurrency
    inflight_floor = _in_flight_floor(config, state, obs, now=now)
    backlog_replicas = _ceil((waiting + inflight) / config.backlog_per_worker)

    service_time = state.service_time
    arrival_rate: float | None = None
    rates = _rates(state.observations) if len(state.observations) >= 2 else None
    completion_rate: float | None = None
    if rates is not None:
        arrival_rate, completion_rate = rates[0], rates[1]
        if state.completions >= MIN_COMPLETIONS_FOR_RATES:
            # Tasks of a few milliseconds are rarely caught running by a sample: many
            # completions and almost no busy time is a measurement (tiny tasks), not a
            # lack of one. A millisecond is the floor of what the figures can tell.
            service_time = max(state.busy_seconds / state.completions, MIN_SERVICE_TIME)
    ahead = forecast_arrivals(state, config, now=now)

    # Sizing uses the mix's service time when each queue's is known, else the pool's.
    pooled = service_time
    if rates is not None:
        mix = _mix_service_time(state, service_time)
        if mix is not None:
            service_time = mix
    if service_time is None or arrival_rate is None or config.max_wait_seconds is None:
        # Nothing to convert counts into time: every task gets a slot at the backlog target.
        needed = float(waiting + inflight) * per_replica / config.backlog_per_worker
        recommendation = backlog_replicas
        basis: Literal["rates", "backlog"] = "backlog"
    else:
        rate = arrival_rate if ahead is None else max(arrival_rate, ahead)
        offered = rate * service_time
        budget = config.max_wait_seconds * WAIT_BUDGET_FRACTION
        # A backlog whose oldest task already waited a tenth of the maximum wait (a cold
        # start, a burst) must drain fast, within half the maximum wait; an ordinary short
        # queue may take twice the maximum wait, which the pool's own slack absorbs. The
        # threshold is not the sizing budget: raised with it, bursts drained late (bursts
        # trace: p95 36 s against keda-tuned's 35 s).
        urgent = (
            obs.oldest_age is not None
            and obs.oldest_age > config.max_wait_seconds * URGENT_AGE_FRACTION
        )
        horizon = config.max_wait_seconds * (
            URGENT_DRAIN_FRACTION if urgent else DRAIN_FRACTION_OF_MAX_WAIT
        )
        # A slot drains horizon/S tasks in time; a task longer than the horizon needs its own.
        drain = min(float(waiting), waiting * service_time / horizon)
        # Enough replicas for the offered load plus the backlog, so that few tasks wait
        # longer than a quarter of the maximum wait. Two levels make a hysteresis band: grow
        # when the pool cannot keep the low level's share, then to the high level; shrink
        # when it has more than the high level needs. Noise in the rate estimates moves the
        # demand within the band, so a steady stream holds its size instead of flapping.
        cap = max(config.max_replicas, 1) + 1
        high = _replicas_for_wait(
            offered=offered + drain,
            service_time=service_time,
            budget=budget,
            share=WAIT_SHARE_HIGH,
            per_replica=per_replica,
            cap=cap,
        )
        low = _replicas_for_wait(
            offered=offered + drain,
            service_time=service_time,
            budget=budget,
            share=WAIT_SHARE_LOW,
            per_replica=per_replica,
            cap=cap,
        )
        needed = offered + drain
        recommendation = high if current < low else min(current, high)
        saturated = (
            current > 0
            and obs.inflight >= current * per_replica
            and waiting > SATURATION_QUEUE * current * per_replica
        )
        if saturated and completion_rate and arrival_rate > completion_rate:
            # Every slot is busy and the queue still grows: whatever the service-time
            # estimate says, the measured throughput is the pool's capacity, and the pool
            # needs arrivals / throughput times its size (HPA's ratio, on what it did).
            recommendation = max(recommendation, _ceil(current * arrival_rate / completion_rate))
        basis = "rates"
        if obs.oldest_age is not None and obs.oldest_age > config.max_wait_seconds:
            # Already missing the target: the estimate is too optimistic, so give every
            # task a slot. This is bounded by the work itself, so it cannot feed on itself.
            recommendation = max(recommendation, backlog_replicas)

    demand = Demand(
        waiting=waiting,
        inflight=inflight,
        scheduled=max(0, obs.scheduled),
        oldest_age=obs.oldest_age,
        arrival_rate=arrival_rate,
        service_time=service_time,
        needed_slots=needed,
        recommendation=max(recommendation, inflight_floor),
        inflight_floor=inflight_floor,
        # What the scale-down window remembers: the demand and the slots in flight, not the
        # busy count. Forgetting the slots too drained busy workers more often when the
        # slot count is the floor (in the simulator: 2 tasks of long-short cut).
        sized=max(recommendation, _ceil(inflight / per_replica)),
        basis=basis,
        forecast_rate=ahead,
    )
    return demand, pooled


def _describe(demand: Demand, config: PolicyConfig) -> str:
    text = f"{demand.waiting} waiting + {demand.inflight} in flight"
    if demand.basis == "rates" and demand.arrival_rate is not None and demand.service_time:
        text += (
            f" at {demand.arrival_rate:.2f}/s * {demand.service_time:.2f}s"
            f" needs {demand.needed_slots:.1f} slots"
        )
    else:
        text += f" needs {demand.needed_slots:.0f} slots"
    per_replica = config.concurrency
    unit = f"workers of {per_replica} slots" if per_replica > 1 else "workers"
    recommended = demand.recommendation
    from_slots = _ceil(demand.needed_slots / per_replica)
    if recommended == from_slots:
        return f"{text} = {recommended} {unit}"
    # The count is not the slots divided by the concurrency: say which rule set it, so the
    # reason never reads "needs 25.5 slots = 120 workers".
    backlog = _ceil((demand.waiting + demand.inflight) / config.backlog_per_worker)
    late = (
        demand.basis == "rates"
        and demand.oldest_age is not None
        and config.max_wait_seconds is not None
        and demand.oldest_age > config.max_wait_seconds
    )
    if late and recommended == backlog and recommended > from_slots:
        return (
            f"{text} ({from_slots} {unit}), but the oldest has waited"
            f" {demand.oldest_age:.0f}s, past the {config.max_wait_seconds:g}s target:"
            f" {recommended} {unit}, one per {config.backlog_per_worker} tasks waiting or running"
        )
    if recommended == demand.inflight_floor and recommended > from_slots:
        return f"{text} ({from_slots} {unit}); {recommended} kept for the work in flight"
    if recommended > from_slots:
        return f"{text}: {recommended} {unit} with headroom for the wait target"
    return f"{text}: {recommended} {unit} kept inside the hysteresis band"


def _prune(state: PolicyState, config: PolicyConfig, *, now: float) -> PolicyState:
    behavior = config.behavior
    window = max(
        behavior.scale_up.stabilization_window_seconds,
        behavior.scale_down.stabilization_window_seconds,
    )
    period = max(
        (p.period_seconds for r in (behavior.scale_up, behavior.scale_down) for p in r.policies),
        default=0,
    )
    return replace(
        state,
        recommendations=tuple(r for r in state.recommendations if r[0] > now - window),
        scale_events=tuple(e for e in state.scale_events if e[0] > now - period),
    )


def _moved(state: PolicyState, *, current: int, replicas: int, now: float) -> PolicyState:
    if replicas == current:
        return state
    return replace(state, scale_events=(*state.scale_events, (now, replicas - current)))


def _clamp(config: PolicyConfig, replicas: int) -> int:
    return min(max(replicas, config.min_replicas), config.max_replicas)


def _allowed(config: PolicyConfig, *, current: int, target: int) -> int:
    """``selectPolicy: Disabled`` blocks its direction entirely, 0↔1 included.

    This is KEDA's ``autoscaling.keda.sh/paused-scale-in`` / ``paused-scale-out``: a pool
    whose scale-down is disabled never goes to zero either, and one whose scale-up is
    disabled never wakes. Only the bounds override it, as HPA's do (a size outside
    ``minReplicas``/``maxReplicas`` is corrected whatever the behaviour says).
    """
    if target > current and config.behavior.scale_up.select_policy == "Disabled":
        target = current
    if target < current and config.behavior.scale_down.select_policy == "Disabled":
        target = current
    return _clamp(config, target)


def _fallback_size(config: PolicyConfig, fallback: Fallback, *, current: int) -> int:
    if fallback.behavior == "currentReplicas":
        return current
    if fallback.behavior == "currentReplicasIfHigher":
        return max(current, fallback.replicas)
    if fallback.behavior == "currentReplicasIfLower":
        return min(current, fallback.replicas)
    return fallback.replicas


def _blind(
    config: PolicyConfig,
    state: PolicyState,
    observation: Observation | None,
    *,
    current: int,
    now: float,
) -> Decision:
    """No usable read: hold (within the bounds) or, past the threshold, fall back."""
    failures = state.failures + 1
    # Blind is not idle: the cooldown to zero starts again from the first good read.
    state = replace(state, failures=failures, last_active_at=now)
    # The reasons carry no running count, age or starting size: they are written to the
    # pool's status, and a text that changed every poll would cost a status write per poll
    # for as long as the outage lasts. The count lives in ``state.failures`` and in the
    # operator's metrics.
    why = (
        "no metrics"
        if observation is None
        else f"metrics older than {config.stale_after_seconds:g}s"
    )
    fallback = config.fallback
    if fallback is not None and failures > fallback.failure_threshold:
        # Never below the replicas that held running tasks at the last good read: a broken
        # metric is no reason to cut work that was in progress.
        wanted = max(_fallback_size(config, fallback, current=current), state.last_floor)
        target = _allowed(config, current=current, target=wanted)
        # The fallback size enters the scale-down window, so leaving fallback is smoothed
        # like any other drop instead of falling straight to what the first read says.
        state = replace(state, recommendations=(*state.recommendations, (now, target)))
        state = _moved(state, current=current, replicas=target, now=now)
        return Decision(
            target,
            FALLBACK,
            f"{why} for more than {fallback.failure_threshold} reads: "
            f"fallback ({fallback.behavior}) to {target}",
            state,
        )
    # Holding is the only safe move: the queue may be full or empty, we cannot tell. The
    # bounds still apply: a newly lowered maxReplicas or raised minReplicas is honoured.
    target = _clamp(config, current)
    state = replace(state, recommendations=(*state.recommendations, (now, target)))
    state = _moved(state, current=current, replicas=target, now=now)
    return Decision(
        target,
        METRICS_UNAVAILABLE,
        f"{why}: holding {target}"
        + (f" (bounds {config.min_replicas}..{config.max_replicas})" if target != current else ""),
        state,
    )


def _work_arrived(previous: Observation | None, observation: Observation) -> bool:
    """Whether work waits now or arrived since the last read: what restarts the cooldown.

    KEDA's ``cooldownPeriod`` runs from the last time its trigger was active (work waiting),
    and Tide's runs from the last work that waited or arrived, not from the last that ran:
    a pool whose last eight-minute task ends ten minutes after it arrived has already been
    quiet for longer than the cooldown, and waiting another minute idle after it buys
    nothing (on the eight-minute-task trace it cost Tide 3 % more than keda-default, which
    scales in while the task runs). Nothing running is ever cut for it: the pool still goes
    to zero only when nothing waits, runs or finished since the last read. Arrivals are
    counted by conservation when the completion counter is read; without it, any task
    waiting or running counts, as before.
    """
    if observation.waiting > 0:
        return True
    if (
        previous is None
        or previous.completed_total is None
        or observation.completed_total is None
        or observation.completed_total < previous.completed_total
    ):
        return observation.waiting + observation.inflight > 0
    arrived = (observation.completed_total - previous.completed_total) + (
        observation.inflight + observation.waiting - previous.inflight - previous.waiting
    )
    return arrived > 0


def _only_the_forecast_wants_workers(config: PolicyConfig, demand: Demand) -> bool:
    """Whether the forecast alone keeps a worker: nothing waits, runs or arrives.

    A pool at zero wakes on a forecast only when it asks to (``forecast.wakeFromZero``), so
    a forecast alone must not keep it from sleeping either: a smoothed arrival level decays
    towards zero after a burst but never reaches it, and would hold one worker for ever.
    """
    return (
        not config.forecast.wake_from_zero
        and demand.waiting == 0
        and demand.inflight == 0
        and demand.inflight_floor == 0
        and not demand.arrival_rate
    )


def decide(
    *,
    config: PolicyConfig,
    state: PolicyState,
    observation: Observation | None,
    current_replicas: int,
    now: float,
) -> Decision:
    """Desired replicas for a pool now, the reason, and the state for the next call.

    ``observation`` is ``None`` when the metric read failed. ``current_replicas`` is the
    pool's current desired size (the Deployment's ``spec.replicas``).
    """
    current = max(0, current_replicas)
    if config.paused:
        # Paused means hands off: no move, and no history that could trigger one on resume.
        return Decision(current, PAUSED, f"paused at {current}", state)

    if not state.initialised:
        # Like HPA, seed the scale-down window with the current size and treat the pool as
        # active, so an operator restart never shrinks a pool at once. A seasonal profile
        # restored from the pool's status (``restore_season``) is kept.
        state = PolicyState(
            initialised=True,
            recommendations=((now, current),),
            last_active_at=now,
            season=state.season,
        )
    state = _prune(state, config, now=now)

    if observation is None or now - observation.at > config.stale_after_seconds:
        return _blind(config, state, observation, current=current, now=now)

    previous = state.observations[-1] if state.observations else None
    state = replace(state, failures=0)
    if observation.oldest_running_age is not None:
        state = replace(
            state,
            longest_running=max(state.longest_running or 0.0, observation.oldest_running_age),
            ages_since=now if state.ages_since is None else state.ages_since,
        )
    state = _remember(state, observation, now=now, config=config)
    demand, service_time = _demand(config, state, observation, current=current, now=now)
    state = replace(state, service_time=service_time, last_floor=demand.inflight_floor)
    # Work is what waits, runs, or finished since the last read: a trickle of tasks shorter
    # than the polling interval is rarely caught waiting or running, and a pool serving it
    # is not idle. The cooldown runs from the last work that waited or arrived.
    finished = (
        previous is not None
        and previous.completed_total is not None
        and observation.completed_total is not None
        and observation.completed_total > previous.completed_total
    )
    busy = demand.waiting + demand.inflight > 0 or finished
    if _work_arrived(previous, observation):
        state = replace(state, last_active_at=now)
    described = _describe(demand, config)

    if current == 0:
        work = demand.waiting + demand.inflight > config.activation_threshold
        # The forecast wakes a sleeping pool only when the pool asks for it: a forecast is
        # a guess, and a worker started for nothing costs at least the cooldown.
        foreseen = (
            config.forecast.wake_from_zero
            and demand.forecast_rate is not None
            and demand.service_time is not None
            and demand.forecast_rate * demand.service_time >= 1.0
        )
        if (work or foreseen) and config.behavior.scale_up.select_policy != "Disabled":
            # Waking: the HPA policies are relative to the current size, which is zero, so
            # allow at least one replica whatever they say.
            limited = max(
                1,
                min(
                    demand.recommendation,
                    scale_up_limit(
                        rules=config.behavior.scale_up,
                        current=0,
                        events=state.scale_events,
                        now=now,
                    ),
                ),
            )
            target = _clamp(config, max(limited, demand.inflight_floor))
            state = replace(
                state, recommendations=(*state.recommendations, (now, demand.recommendation))
            )
            state = _moved(state, current=0, replicas=target, now=now)
            why = "" if work else " (forecast)"
            return Decision(
                target, ACTIVATED, f"activate 0→{target}{why}: {described}", state, demand
            )
        if config.min_replicas == 0:
            note = (
                "scale-up is Disabled"
                if work
                else f"activation above {config.activation_threshold}"
            )
            return Decision(
                0,
                HELD,
                f"idle at 0: {demand.waiting + demand.inflight} tasks, {note}",
                state,
                demand,
            )

    # Below one the HPA arithmetic is not defined; zero is decided separately (KEDA-style).
    raw = max(demand.sized, 1)
    stabilized = stabilize(
        behavior=config.behavior,
        recommendations=state.recommendations,
        desired=raw,
        current=current,
        now=now,
    )
    state = replace(state, recommendations=(*state.recommendations, (now, raw)))
    limited = limit_by_behavior(
        behavior=config.behavior,
        events=state.scale_events,
        desired=stabilized,
        current=current,
        now=now,
    )
    # In-flight work keeps its replicas whatever the windows say: removing a busy worker
    # either waits out its grace period or kills a task.
    target = _allowed(config, current=current, target=max(limited, demand.inflight_floor))

    idle_for = now - (state.last_active_at if state.last_active_at is not None else now)
    if (
        config.min_replicas == 0
        and (demand.recommendation == 0 or _only_the_forecast_wants_workers(config, demand))
        and demand.scheduled == 0
        and not busy
        and idle_for >= config.cooldown_period
        and config.behavior.scale_down.select_policy != "Disabled"
    ):
        # Nothing waits, runs or is scheduled (ETA tasks live in a worker and would run late
        # with none), and the cooldown has passed: the pool may sleep.
        state = _moved(state, current=current, replicas=0, now=now)
        return Decision(
            0,
            COOLDOWN_TO_ZERO,
            f"scale to zero {current}→0: idle for {idle_for:.0f}s "
            f"(cooldown {config.cooldown_period:.0f}s)",
            state,
            demand,
        )

    state = _moved(state, current=current, replicas=target, now=now)
    if target > current:
        return Decision(
            target, SCALED_UP, f"scale up {current}→{target}: {described}", state, demand
        )
    if target < current:
        return Decision(
            target, SCALED_DOWN, f"scale down {current}→{target}: {described}", state, demand
        )
    note = described
    if current == config.max_replicas and demand.recommendation > current:
        note += f"; at maxReplicas ({config.max_replicas})"
    if max(raw, demand.inflight_floor) < current:
        window = config.behavior.scale_down.stabilization_window_seconds
        if config.behavior.scale_down.select_policy == "Disabled":
            note += "; scale-down is Disabled"
        elif stabilized >= current:
            note += f"; holding for the {window}s scale-down window"
        else:
            note += "; the scale-down policies allow no more for now"
    if demand.recommendation == 0 and config.min_replicas == 0 and current == 1:
        if demand.scheduled:
            note += f"; {demand.scheduled} ETA tasks keep a worker"
        elif idle_for < config.cooldown_period:
            note += f"; cooldown {config.cooldown_period - idle_for:.0f}s left before zero"
    return Decision(current, HELD, f"hold {current}: {note}", state, demand)
