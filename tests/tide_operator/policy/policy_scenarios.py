"""Building blocks for the policy tests: configs, observation streams, hypothesis strategies,
and ``replay``, which applies decisions one after another as the operator does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st

from tide_operator.core.policy import (
    Decision,
    Observation,
    PolicyConfig,
    PolicyState,
    decide,
)


def make_config(**overrides: Any) -> PolicyConfig:
    base: dict[str, Any] = {"min_replicas": 0, "max_replicas": 50, "concurrency": 4}
    base.update(overrides)
    return PolicyConfig(**base)


def replay(
    config: PolicyConfig,
    steps: Iterable[tuple[float, Observation | None]],
    *,
    current: int,
    state: PolicyState | None = None,
) -> tuple[list[Decision], int, PolicyState]:
    """Feed observations in order, applying each decision as the operator would."""
    state = state or PolicyState()
    decisions = []
    for now, observation in steps:
        decision = decide(
            config=config,
            state=state,
            observation=observation,
            current_replicas=current,
            now=now,
        )
        decisions.append(decision)
        state, current = decision.state, decision.replicas
    return decisions, current, state


def stream(
    *, rate: float, service: float, start: float, seconds: float, step: float = 5.0
) -> list[tuple[float, Observation]]:
    """A steady stream as an exporter reports it: λS in flight and a completion counter."""
    out = []
    t = start
    while t <= start + seconds + 1e-9:
        out.append(
            (
                t,
                Observation(
                    at=t,
                    waiting=0,
                    inflight=round(rate * service),
                    oldest_age=0.0,
                    completed_total=rate * t,
                ),
            )
        )
        t += step
    return out


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    low = draw(st.integers(0, 5))
    high = draw(st.integers(max(low, 1), 40))
    return PolicyConfig(
        min_replicas=low,
        max_replicas=high,
        concurrency=draw(st.integers(1, 8)),
        target_backlog_per_worker=draw(st.none() | st.integers(1, 20)),
        max_wait_seconds=draw(st.none() | st.floats(5, 600)),
        activation_threshold=draw(st.integers(0, 5)),
        cooldown_period=draw(st.floats(0, 300)),
    )


@st.composite
def observation_steps(draw: st.DrawFn, *, rates: bool = True) -> list[tuple[float, Observation]]:
    """A random history: irregular times, random queue figures, a monotonic counter."""
    count = draw(st.integers(1, 12))
    now = 0.0
    completed = 0.0
    out = []
    for _ in range(count):
        now += draw(st.floats(1, 40))
        completed += draw(st.integers(0, 200))
        out.append(
            (
                now,
                Observation(
                    at=now,
                    waiting=draw(st.integers(0, 300)),
                    inflight=draw(st.integers(0, 200)),
                    oldest_age=draw(st.floats(0, 900)),
                    completed_total=completed if rates else None,
                ),
            )
        )
    return out
