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
2. A missing or stale observation is a failure: keep the current size (a broken metric is
   not evidence that the queue is empty) until ``fallback.failureThreshold`` consecutive
   failures, then move to ``fallback.replicas``.
3. Demand, in worker slots, from Celery's view of the queue:

   * without rates, every waiting or in-flight task wants a slot:
     ``ceil((waiting + inflight) / targetBacklogPerWorker)`` (ETA tasks are not demand);
   * with a completion counter, Little's law gives the service time
     ``S = mean(inflight) / completion rate`` and conservation gives the arrival rate
     ``λ = completion rate + Δ(waiting + inflight) / Δt``. The steady stream needs
     ``λS`` slots plus square-root-staffing headroom ``√(λS)`` (Halfin-Whitt), the backlog
     needs enough slots to drain within half the maximum wait, and in-flight work always
     keeps its slots. A steady stream then reads the same demand whatever the current size,
     which is what stops the feedback loop of sizing on list length;
   * when the oldest message is already older than ``maxWaitSeconds`` the rate model is
     evidently too optimistic, and the policy falls back to one slot per task.

4. Never below the replicas the in-flight work occupies, and never zero while anything
   waits, runs or is scheduled, or before ``cooldownPeriod`` has passed since work was last
   seen (KEDA's deactivation). From zero, wake when demand exceeds ``activationThreshold``.
5. Stabilise and rate-limit exactly like the HorizontalPodAutoscaler's ``behavior``: the
   result lies between the lowest recommendation of the scale-up window and the highest of
   the scale-down window, then within what the step policies allow over their periods,
   then within ``minReplicas``/``maxReplicas``. The HPA functions are public
   (``stabilize``, ``scale_up_limit``, ``scale_down_limit``) so the simulator's KEDA and HPA
   baselines run the very same arithmetic.
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
    "Behavior",
    "Decision",
    "Demand",
    "Fallback",
    "Observation",
    "PolicyConfig",
    "PolicyState",
    "ScalingPolicy",
    "ScalingRules",
    "decide",
    "limit_by_behavior",
    "scale_down_limit",
    "scale_up_limit",
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

# Rates are measured over this much observation history. A minute holds enough completions
# of second-long tasks for Little's law to be accurate to a few percent, and is short enough
# that the arrival-rate estimate follows a burst's end within one scale-down window.
RATE_WINDOW_SECONDS: Final = 60.0
# Below this many completions in the window the service-time estimate is mostly noise, and
# the last good estimate (or the backlog rule) is used instead.
MIN_COMPLETIONS_FOR_RATES: Final = 5
# The backlog is sized to drain within this fraction of the maximum wait; the rest of the
# budget is left for a new pod to start and for the metric to reach the operator.
DRAIN_FRACTION_OF_MAX_WAIT: Final = 0.5
# Square-root-staffing headroom, in multiples of √(offered slots): the pool is sized to the
# high level and grows only when it falls below the low one (see ``_demand``).
# Full Halfin-Whitt headroom (1.0) keeps waits near zero, which a maximum wait of a minute
# does not ask for; 0.75 runs the diurnal trace at 73% instead of 70% utilisation with p99
# waits still under two seconds (bench/results/simulator).
HEADROOM_HIGH: Final = 0.75
HEADROOM_LOW: Final = 0.25
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


class Fallback(_SpecModel):
    """KEDA's ``fallback``: the size to run after ``failureThreshold`` failed metric reads."""

    failure_threshold: int = Field(ge=1)
    # At least one: an unreadable metric must never take a pool to zero.
    replicas: int = Field(ge=1)


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
    paused: bool = False
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
class Observation:
    """One successful read of a pool's queues, taken at ``at`` (seconds, caller's clock)."""

    at: float
    waiting: int
    inflight: int
    scheduled: int = 0
    oldest_age: float | None = None
    # Monotonic counter of finished tasks; optional. With it the policy uses rates.
    completed_total: float | None = None


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


def _remember(state: PolicyState, observation: Observation, *, now: float) -> PolicyState:
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
    return replace(state, observations=(*kept, observation))


def _demand(
    config: PolicyConfig, state: PolicyState, obs: Observation, *, current: int
) -> tuple[Demand, float | None]:
    waiting, inflight = max(0, obs.waiting), max(0, obs.inflight)
    per_replica = config.concurrency
    inflight_floor = _ceil(inflight / per_replica)
    backlog_replicas = _ceil((waiting + inflight) / config.backlog_per_worker)

    service_time = state.service_time
    arrival_rate: float | None = None
    rates = _rates(state.observations) if len(state.observations) >= 2 else None
    if rates is not None:
        arrival_rate, completion_rate, completions = rates
        mean_inflight = sum(o.inflight for o in state.observations) / len(state.observations)
        # Little's law on the slots: mean occupancy = throughput * service time. With few
        # completions, or short tasks that no sample caught running, it says nothing.
        if completions >= MIN_COMPLETIONS_FOR_RATES and mean_inflight > 0:
            service_time = mean_inflight / completion_rate

    if service_time is None or arrival_rate is None or config.max_wait_seconds is None:
        # Nothing to convert counts into time: every task gets a slot at the backlog target.
        needed = float(waiting + inflight) * per_replica / config.backlog_per_worker
        recommendation = backlog_replicas
        basis: Literal["rates", "backlog"] = "backlog"
    else:
        offered = arrival_rate * service_time
        horizon = config.max_wait_seconds * DRAIN_FRACTION_OF_MAX_WAIT
        # A slot drains horizon/S tasks in time; a task longer than the horizon needs its own.
        drain = min(float(waiting), waiting * service_time / horizon)

        def slots(headroom: float) -> float:
            # The instantaneous in-flight count is not added: it is the noisy sample that
            # λS averages, and it only acts as the floor (``inflight_floor``) below.
            return offered + headroom * math.sqrt(offered) + drain

        # Square-root staffing: λS slots keep up on average and a multiple of √(λS) more
        # absorb Poisson noise (Halfin-Whitt). Two levels make a hysteresis band: grow when the
        # pool cannot offer the low headroom, then to the high one; shrink when it has more
        # than the high one. Noise in the rate estimates moves the demand within
        # the band, so a steady stream holds its size instead of flapping by one replica.
        needed = slots(HEADROOM_HIGH)
        high = _ceil(needed / per_replica)
        low = _ceil(slots(HEADROOM_LOW) / per_replica)
        recommendation = high if current < low else min(current, high)
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
        basis=basis,
    )
    return demand, service_time


def _describe(demand: Demand, config: PolicyConfig) -> str:
    text = f"{demand.waiting} waiting + {demand.inflight} in flight"
    if demand.basis == "rates" and demand.arrival_rate is not None and demand.service_time:
        text += (
            f" at {demand.arrival_rate:.2f}/s * {demand.service_time:.2f}s"
            f" needs {demand.needed_slots:.1f} slots"
        )
    else:
        text += f" needs {demand.needed_slots:.0f} slots"
    return (
        f"{text} = {demand.recommendation} workers of {config.concurrency} slots"
        if config.concurrency > 1
        else f"{text} = {demand.recommendation} workers"
    )


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
        # active, so an operator restart never shrinks a pool at once.
        state = PolicyState(
            initialised=True,
            recommendations=((now, current),),
            last_active_at=now,
        )
    state = _prune(state, config, now=now)

    if observation is None or now - observation.at > config.stale_after_seconds:
        failures = state.failures + 1
        state = replace(state, failures=failures)
        why = "no metrics" if observation is None else f"metrics {now - observation.at:.0f}s old"
        fallback = config.fallback
        if fallback is not None and failures >= fallback.failure_threshold:
            target = _clamp(config, fallback.replicas)
            state = _moved(state, current=current, replicas=target, now=now)
            return Decision(
                target,
                FALLBACK,
                f"{why} for {failures} reads: fallback {current}→{target}",
                state,
            )
        # Holding is the only safe move: the queue may be full or empty, we cannot tell.
        return Decision(
            current, METRICS_UNAVAILABLE, f"{why} ({failures} in a row): holding {current}", state
        )

    state = replace(state, failures=0)
    state = _remember(state, observation, now=now)
    demand, service_time = _demand(config, state, observation, current=current)
    state = replace(state, service_time=service_time)
    busy = demand.waiting + demand.inflight > 0
    if busy:
        state = replace(state, last_active_at=now)
    described = _describe(demand, config)

    if current == 0:
        if demand.waiting + demand.inflight > config.activation_threshold:
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
            return Decision(target, ACTIVATED, f"activate 0→{target}: {described}", state, demand)
        if config.min_replicas == 0:
            return Decision(
                0,
                HELD,
                f"idle at 0: {demand.waiting + demand.inflight} tasks, activation above "
                f"{config.activation_threshold}",
                state,
                demand,
            )

    # Below one the HPA arithmetic is not defined; zero is decided separately (KEDA-style).
    raw = max(demand.recommendation, 1)
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
    # In-flight work keeps its slots whatever the windows say: removing a busy worker
    # either waits out its grace period or kills a task.
    target = _clamp(config, max(limited, demand.inflight_floor))

    idle_for = now - (state.last_active_at if state.last_active_at is not None else now)
    if (
        config.min_replicas == 0
        and demand.recommendation == 0
        and demand.scheduled == 0
        and not busy
        and idle_for >= config.cooldown_period
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
        note += (
            f"; holding for the {window}s scale-down window"
            if stabilized >= current
            else "; the scale-down policies allow no more for now"
        )
    if demand.recommendation == 0 and config.min_replicas == 0 and current == 1:
        if demand.scheduled:
            note += f"; {demand.scheduled} ETA tasks keep a worker"
        elif idle_for < config.cooldown_period:
            note += f"; cooldown {config.cooldown_period - idle_for:.0f}s left before zero"
    return Decision(current, HELD, f"hold {current}: {note}", state, demand)
