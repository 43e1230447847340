"""Invariants of ``decide`` over random configs and observation histories."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from policy_scenarios import configs, observation_steps, replay

from tide_operator.core.policy import (
    COOLDOWN_TO_ZERO,
    FALLBACK,
    METRICS_UNAVAILABLE,
    Fallback,
    Observation,
    PolicyConfig,
    PolicyState,
    decide,
)


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_within_bounds(config: PolicyConfig, steps: list, start: int) -> None:
    current = min(max(start, config.min_replicas), config.max_replicas)
    decisions, _, _ = replay(config, steps, current=current)
    for d in decisions:
        assert config.min_replicas <= d.replicas <= config.max_replicas, d.reason


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_never_below_inflight_need(config: PolicyConfig, steps: list, start: int) -> None:
    current = min(max(start, config.min_replicas), config.max_replicas)
    decisions, _, _ = replay(config, steps, current=current)
    for (_, observation), d in zip(steps, decisions, strict=True):
        need = math.ceil(observation.inflight / config.concurrency)
        asleep = current == 0 and (
            observation.waiting + observation.inflight <= config.activation_threshold
        )
        if asleep:
            # A pool at zero wakes only above activationThreshold (KEDA's meaning): tasks in
            # flight with no replica are held by no worker of the pool (an unacked message
            # of a worker gone), and the user asked not to wake for so few. This was the
            # property's random-mode flake (``asleep-below-activation`` in the table).
            assert d.replicas == 0, d.reason
        else:
            assert d.replicas >= min(need, config.max_replicas), d.reason
        current = d.replicas


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_no_scale_down_inside_the_window(config: PolicyConfig, steps: list, start: int) -> None:
    current = min(max(start, config.min_replicas), config.max_replicas)
    window = config.behavior.scale_down.stabilization_window_seconds
    state = PolicyState()
    for now, observation in steps:
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        if d.replicas < current and d.reason_code != COOLDOWN_TO_ZERO:
            # HPA semantics: no lower than the highest recommendation within the window.
            highest = max(r for t, r in d.state.recommendations if t > now - window)
            assert d.replicas >= min(current, highest, config.max_replicas), d.reason
        state, current = d.state, d.replicas


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_zero_only_when_idle_past_the_cooldown(
    config: PolicyConfig, steps: list, start: int
) -> None:
    """Zero only when nothing waits, runs or just finished, a cooldown after the last work
    that waited or arrived (KEDA's cooldown runs from its trigger's last activity)."""
    current = min(max(start, config.min_replicas), config.max_replicas)
    state = PolicyState()
    last_work = steps[0][0]  # the first call seeds the pool as active
    previous: Observation | None = None
    for now, observation in steps:
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        present = observation.waiting + observation.inflight
        if previous is None or previous.completed_total is None:
            arrived = present > 0
        else:
            assert observation.completed_total is not None
            finished = observation.completed_total - previous.completed_total
            arrived = finished + present - (previous.waiting + previous.inflight) > 0
        if observation.waiting > 0 or arrived:
            last_work = now
        if current > 0 and d.replicas == 0:
            assert observation.waiting == observation.inflight == 0
            assert previous is None or previous.completed_total == observation.completed_total
            assert now - last_work >= config.cooldown_period
        state, current, previous = d.state, d.replicas, observation


@given(
    config=configs(),
    steps=observation_steps(),
    start=st.integers(0, 40),
    less=st.integers(0, 300),
    more=st.integers(0, 300),
)
def test_monotone_in_backlog(
    config: PolicyConfig, steps: list, start: int, less: int, more: int
) -> None:
    less, more = sorted((less, more))
    current = min(max(start, config.min_replicas), config.max_replicas)
    *history, (now, last) = steps
    _, current, state = replay(config, history, current=current)
    results = [
        decide(
            config=config,
            state=state,
            observation=replace(last, waiting=waiting),
            current_replicas=current,
            now=now,
        ).replicas
        for waiting in (less, more)
    ]
    assert results[0] <= results[1]


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_paused_does_nothing(config: PolicyConfig, steps: list, start: int) -> None:
    paused = config.model_copy(update={"paused": True})
    state = PolicyState()
    for now, observation in steps:
        d = decide(
            config=paused, state=state, observation=observation, current_replicas=start, now=now
        )
        assert d.replicas == start
        assert d.state is state


@given(
    config=configs(),
    steps=observation_steps(),
    start=st.integers(1, 40),
    failures=st.integers(1, 10),
    fallback=st.none() | st.tuples(st.integers(1, 5), st.integers(1, 40)),
    stale=st.booleans(),
)
def test_missing_metrics_never_scale_to_zero(
    config: PolicyConfig,
    steps: list,
    start: int,
    failures: int,
    fallback: tuple[int, int] | None,
    stale: bool,
) -> None:
    if fallback is not None:
        config = config.model_copy(
            update={
                "fallback": Fallback(
                    failure_threshold=fallback[0],
                    replicas=min(fallback[1], config.max_replicas),
                )
            }
        )
    current = min(max(start, config.min_replicas, 1), config.max_replicas)
    _, current, state = replay(config, steps, current=current)
    current = max(current, 1)
    now = steps[-1][0]
    for _ in range(failures):
        now += config.polling_interval
        # A stale read is as good as none: an exporter stuck on an old (maybe empty) value.
        observation = (
            Observation(at=now - 10 * config.stale_after_seconds, waiting=0, inflight=0)
            if stale
            else None
        )
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        assert d.replicas > 0, d.reason
        state, current = d.state, d.replicas


# ------------------------------------------------------- issue 13: the invariants it added


@st.composite
def probed_steps(draw: st.DrawFn) -> list[tuple[float, Observation]]:
    """Histories as the busy probe reports them: replicas holding tasks, the oldest age."""
    steps = draw(observation_steps())
    out = []
    for now, observation in steps:
        busy = draw(st.integers(0, 40))
        out.append(
            (
                now,
                replace(
                    observation,
                    busy_replicas=busy,
                    oldest_running_age=draw(st.floats(0, 900)) if busy else 0.0,
                ),
            )
        )
    return out


@given(config=configs(), steps=probed_steps(), start=st.integers(0, 40))
def test_never_below_replicas_holding_tasks(config: PolicyConfig, steps: list, start: int) -> None:
    """With tasks that may outlast the grace period, no replica holding one is removed."""
    # A task declared longer than the grace period: draining a busy replica could cut it.
    config = config.model_copy(update={"longest_task_seconds": 3600.0})
    current = min(max(start, config.min_replicas), config.max_replicas)
    state = PolicyState()
    for now, observation in steps:
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        holding = min(observation.busy_replicas, current)
        if d.replicas < current:
            assert d.replicas >= min(holding, config.max_replicas), d.reason
        state, current = d.state, d.replicas


BEHAVIORS = ("static", "currentReplicas", "currentReplicasIfHigher", "currentReplicasIfLower")


@given(
    config=configs(),
    steps=probed_steps(),
    start=st.integers(1, 40),
    threshold=st.integers(0, 5),
    replicas=st.integers(1, 40),
    behavior=st.sampled_from(BEHAVIORS),
    failures=st.integers(1, 12),
)
def test_fallback_counts_like_keda_and_keeps_inflight_work(
    config: PolicyConfig,
    steps: list,
    start: int,
    threshold: int,
    replicas: int,
    behavior: str,
    failures: int,
) -> None:
    """Fallback starts after *more* than failureThreshold failures, never goes below the
    replicas that held tasks at the last good read, and stays within the bounds."""
    config = config.model_copy(
        update={
            "fallback": Fallback(
                failure_threshold=threshold,
                replicas=min(replicas, config.max_replicas),
                behavior=behavior,  # type: ignore[arg-type]
            ),
            "longest_task_seconds": 3600.0,
        }
    )
    current = min(max(start, config.min_replicas), config.max_replicas)
    _, current, state = replay(config, steps, current=current)
    floor = state.last_floor
    now = steps[-1][0]
    for failure in range(1, failures + 1):
        now += config.polling_interval
        d = decide(config=config, state=state, observation=None, current_replicas=current, now=now)
        assert config.min_replicas <= d.replicas <= config.max_replicas
        if failure > threshold:
            assert d.reason_code == FALLBACK, d.reason
            assert d.replicas >= min(floor, config.max_replicas), d.reason
        else:
            assert d.reason_code == METRICS_UNAVAILABLE, d.reason
            # Holding: the current size, brought within the bounds.
            assert d.replicas == min(max(current, config.min_replicas), config.max_replicas)
        state, current = d.state, d.replicas


@given(config=configs(), steps=observation_steps(), start=st.integers(0, 40))
def test_disabled_blocks_its_direction_including_zero(
    config: PolicyConfig, steps: list, start: int
) -> None:
    """selectPolicy Disabled: never up (no 0 → 1) or never down (no 1 → 0), within bounds."""
    from tide_operator.core.policy import Behavior, ScalingRules

    up_off = config.model_copy(
        update={"behavior": Behavior(scale_up=ScalingRules(select_policy="Disabled"))}
    )
    down_off = config.model_copy(
        update={"behavior": Behavior(scale_down=ScalingRules(select_policy="Disabled"))}
    )
    for cfg, direction in ((up_off, 1), (down_off, -1)):
        current = min(max(start, cfg.min_replicas), cfg.max_replicas)
        state = PolicyState()
        for now, observation in steps:
            d = decide(
                config=cfg, state=state, observation=observation, current_replicas=current, now=now
            )
            moved = d.replicas - current
            assert moved * direction <= 0, d.reason
            state, current = d.state, d.replicas


@given(
    config=configs(),
    start=st.integers(2, 40),
    fallback=st.integers(2, 40),
    seconds=st.floats(0, 29),
)
def test_leaving_fallback_waits_for_the_scale_down_window(
    config: PolicyConfig, start: int, fallback: int, seconds: float
) -> None:
    """The first good reads after a fallback do not drop below it within the window."""
    size = min(fallback, config.max_replicas)
    config = config.model_copy(update={"fallback": Fallback(failure_threshold=0, replicas=size)})
    window = config.behavior.scale_down.stabilization_window_seconds
    current = min(max(start, config.min_replicas), config.max_replicas)
    d = decide(
        config=config, state=PolicyState(), observation=None, current_replicas=current, now=0.0
    )
    assert d.reason_code == FALLBACK
    empty = Observation(at=seconds, waiting=0, inflight=0, completed_total=0.0)
    after = decide(
        config=config, state=d.state, observation=empty, current_replicas=d.replicas, now=seconds
    )
    if seconds < window and after.reason_code != COOLDOWN_TO_ZERO:
        assert after.replicas >= min(d.replicas, config.max_replicas), after.reason


@given(config=configs(), steps=observation_steps(), wake=st.booleans())
def test_forecast_never_wakes_from_zero_unless_asked(
    config: PolicyConfig, steps: list, wake: bool
) -> None:
    """From zero, with nothing waiting or running, only wakeFromZero lets the forecast wake."""
    from tide_operator.core.policy import Forecast

    config = config.model_copy(
        update={"forecast": Forecast(wake_from_zero=wake), "min_replicas": 0}
    )
    state = PolicyState()
    current = 0
    for now, observation in steps:
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        if current == 0 and d.replicas > 0 and not wake:
            assert observation.waiting + observation.inflight > config.activation_threshold
        state, current = d.state, d.replicas


@given(steps=observation_steps())
def test_memory_per_pool_is_bounded(steps: list) -> None:
    """The forecast's memory is the seasonal profile (SEASON_BUCKETS floats) and a few more."""
    from tide_operator.core.policy import SEASON_BUCKETS

    config = PolicyConfig(max_replicas=50, concurrency=4)
    _, _, state = replay(config, steps, current=1)
    assert len(state.season) in (0, SEASON_BUCKETS)
    assert len(state.observations) <= 60 / 1 + 1
