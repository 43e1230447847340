"""Invariants of ``decide`` over random configs and observation histories."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from policy_scenarios import configs, observation_steps, replay

from tide_operator.core.policy import (
    COOLDOWN_TO_ZERO,
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
        assert d.replicas >= min(need, config.max_replicas), d.reason


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
    current = min(max(start, config.min_replicas), config.max_replicas)
    state = PolicyState()
    last_busy = steps[0][0]  # the first call seeds the pool as active
    for now, observation in steps:
        d = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        if observation.waiting + observation.inflight > 0:
            last_busy = now
        if current > 0 and d.replicas == 0:
            assert observation.waiting == observation.inflight == 0
            assert now - last_busy >= config.cooldown_period
        state, current = d.state, d.replicas


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
