"""Table-driven decisions: each row is one situation and what the policy must do about it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from policy_scenarios import make_config, replay, stream

from tide_operator.core.policy import (
    ACTIVATED,
    COOLDOWN_TO_ZERO,
    FALLBACK,
    HELD,
    HPA_DEFAULT_BEHAVIOR,
    METRICS_UNAVAILABLE,
    PAUSED,
    SCALED_DOWN,
    SCALED_UP,
    Fallback,
    Observation,
    PolicyState,
    decide,
)


def obs(at: float, waiting: int = 0, inflight: int = 0, **extra: Any) -> Observation:
    return Observation(at=at, waiting=waiting, inflight=inflight, **extra)


@dataclass
class Case:
    id: str
    config: dict[str, Any]
    # What happened before, fed in order from the starting size ``current``.
    before: list[tuple[float, Observation | None]]
    current: int
    now: float
    observation: Observation | None
    replicas: int
    code: str
    reason_contains: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    # A backlog scales up at once: 42 waiting + 3 running need ceil(45/4) = 12 workers, and
    # Tide's default steps (+300% or +10 per 15 s) allow 2 → 12.
    Case("backlog-scales-up", {}, [], 2, 0.0, obs(0, 42, 3), 12, SCALED_UP, "scale up 2→12"),
    # Under HPA's default behaviour the same move is capped at max(2+4, 2*2) = 6.
    Case(
        "hpa-step-limit",
        {"behavior": HPA_DEFAULT_BEHAVIOR},
        [],
        2,
        0.0,
        obs(0, 42, 3),
        6,
        SCALED_UP,
    ),
    # maxReplicas clamps whatever the demand.
    Case("clamp-max", {"max_replicas": 7}, [], 2, 0.0, obs(0, 900, 8), 7, SCALED_UP),
    # One waiting message wakes a sleeping pool (activation threshold 0, like KEDA).
    Case("activate-from-zero", {}, [], 0, 0.0, obs(0, 1, 0), 1, ACTIVATED, "activate 0→1"),
    # Below the activation threshold a sleeping pool stays asleep.
    Case("below-activation", {"activation_threshold": 5}, [], 0, 0.0, obs(0, 5, 0), 0, HELD),
    # Demand gone 10 s after the pool was seeded at 10: the 30 s scale-down window holds it.
    Case(
        "window-holds",
        {},
        [(0.0, obs(0, 30, 10))],
        10,
        10.0,
        obs(10, 0, 2),
        10,
        HELD,
        "scale-down window",
    ),
    # After the window the pool shrinks to what is in flight (2 tasks → 1 worker of 4 slots).
    Case(
        "window-passed",
        {},
        [(0.0, obs(0, 30, 10))],
        10,
        31.0,
        obs(31, 0, 2),
        1,
        SCALED_DOWN,
    ),
    # Scale-down never removes workers that in-flight tasks occupy: 20 running → 5 workers.
    Case("inflight-floor", {}, [(0.0, obs(0, 0, 20))], 10, 31.0, obs(31, 0, 20), 5, SCALED_DOWN),
    # Nothing waits or runs for longer than the cooldown: the pool goes to zero.
    Case(
        "cooldown-to-zero",
        {"cooldown_period": 60},
        [(0.0, obs(0, 0, 0)), (30.0, obs(30, 0, 0))],
        1,
        61.0,
        obs(61, 0, 0),
        0,
        COOLDOWN_TO_ZERO,
    ),
    # The cooldown runs from the last work that waited or arrived, as KEDA's runs from the
    # last time its trigger was active: one task arrived at 0 s and ran for 600 s, ten
    # times the cooldown, with nothing arriving after it (counter: nothing new beyond it).
    # Nothing waits, runs or finished since the read at 605 s: the pool sleeps now, not a
    # cooldown after the task ended.
    Case(
        "cooldown-from-last-arrival",
        {"cooldown_period": 60},
        [
            (0.0, obs(0, 1, 0, completed_total=0.0)),
            (5.0, obs(5, 0, 1, completed_total=0.0)),
            (300.0, obs(300, 0, 1, completed_total=0.0)),
            (600.0, obs(600, 0, 1, completed_total=0.0)),
            (605.0, obs(605, 0, 0, completed_total=1.0)),
        ],
        1,
        610.0,
        obs(610, 0, 0, completed_total=1.0),
        0,
        COOLDOWN_TO_ZERO,
    ),
    # ... but never while the task runs, nor at the read that sees it finish.
    Case(
        "no-zero-while-a-long-task-runs",
        {"cooldown_period": 60},
        [(0.0, obs(0, 1, 0, completed_total=0.0)), (5.0, obs(5, 0, 1, completed_total=0.0))],
        1,
        600.0,
        obs(600, 0, 1, completed_total=0.0),
        1,
        HELD,
    ),
    # At zero, two tasks in flight (unacked, held by no worker of the pool) and an activation
    # threshold of 3: the pool stays asleep, KEDA's activation, not the in-flight floor.
    Case(
        "asleep-below-activation",
        {"activation_threshold": 3, "concurrency": 2},
        [],
        0,
        0.0,
        obs(0, 0, 2),
        0,
        HELD,
        "activation above 3",
    ),
    # Idle, but the cooldown has not passed: one worker stays for the next task.
    Case(
        "cooldown-pending",
        {"cooldown_period": 60},
        [(0.0, obs(0, 0, 0))],
        1,
        40.0,
        obs(40, 0, 0),
        1,
        HELD,
        "cooldown",
    ),
    # ETA tasks are held by a worker: a pool holding them must not sleep, or they run late.
    Case(
        "scheduled-blocks-zero",
        {"cooldown_period": 0},
        [(0.0, obs(0, 0, 0, scheduled=3))],
        1,
        100.0,
        obs(100, 0, 0, scheduled=3),
        1,
        HELD,
    ),
    # ETA tasks are not demand: 50 scheduled tasks do not add workers.
    Case("scheduled-not-demand", {}, [], 1, 0.0, obs(0, 0, 0, scheduled=50), 1, HELD),
    # minReplicas keeps a floor even when idle past the cooldown.
    Case("min-replicas", {"min_replicas": 2, "cooldown_period": 0}, [], 3, 0.0, obs(0), 3, HELD),
    # A failed read holds the current size.
    Case("metrics-missing", {}, [], 4, 0.0, None, 4, METRICS_UNAVAILABLE, "no metrics"),
    # A read older than staleAfterSeconds (30 s) counts as a failure too.
    Case("metrics-stale", {}, [], 4, 100.0, obs(10), 4, METRICS_UNAVAILABLE, "older than 30s"),
    # KEDA falls back when the failures *exceed* failureThreshold: the third of three holds.
    Case(
        "fallback-not-at-threshold",
        {"fallback": Fallback(failure_threshold=3, replicas=6)},
        [(0.0, None), (5.0, None)],
        4,
        10.0,
        None,
        4,
        METRICS_UNAVAILABLE,
    ),
    # The fourth consecutive failure moves to the fallback size.
    Case(
        "fallback",
        {"fallback": Fallback(failure_threshold=3, replicas=6)},
        [(0.0, None), (5.0, None), (10.0, None)],
        4,
        15.0,
        None,
        6,
        FALLBACK,
        "fallback (static) to 6",
    ),
    # failureThreshold 0 (allowed by KEDA) falls back on the first failure.
    Case(
        "fallback-threshold-zero",
        {"fallback": Fallback(failure_threshold=0, replicas=6)},
        [],
        4,
        0.0,
        None,
        6,
        FALLBACK,
    ),
    # currentReplicas keeps the size the pool had.
    Case(
        "fallback-current",
        {"fallback": Fallback(failure_threshold=0, replicas=6, behavior="currentReplicas")},
        [],
        4,
        0.0,
        None,
        4,
        FALLBACK,
    ),
    # currentReplicasIfHigher: 9 is above 6, so 9 stays.
    Case(
        "fallback-if-higher-keeps",
        {"fallback": Fallback(failure_threshold=0, replicas=6, behavior="currentReplicasIfHigher")},
        [],
        9,
        0.0,
        None,
        9,
        FALLBACK,
    ),
    # currentReplicasIfHigher: 4 is below 6, so 6.
    Case(
        "fallback-if-higher-raises",
        {"fallback": Fallback(failure_threshold=0, replicas=6, behavior="currentReplicasIfHigher")},
        [],
        4,
        0.0,
        None,
        6,
        FALLBACK,
    ),
    # currentReplicasIfLower: 4 is below 6, so 4 stays.
    Case(
        "fallback-if-lower-keeps",
        {"fallback": Fallback(failure_threshold=0, replicas=6, behavior="currentReplicasIfLower")},
        [],
        4,
        0.0,
        None,
        4,
        FALLBACK,
    ),
    # currentReplicasIfLower: 9 is above 6, so 6.
    Case(
        "fallback-if-lower-lowers",
        {"fallback": Fallback(failure_threshold=0, replicas=6, behavior="currentReplicasIfLower")},
        [],
        9,
        0.0,
        None,
        6,
        FALLBACK,
    ),
    # The case: 40 tasks ran on 10 workers at the last good read; a static fallback of
    # 1 must not cut them to one worker.
    Case(
        "fallback-keeps-inflight",
        {"fallback": Fallback(failure_threshold=1, replicas=1)},
        [(0.0, obs(0, 0, 40, busy_replicas=10)), (5.0, None)],
        10,
        10.0,
        None,
        10,
        FALLBACK,
        "to 10",
    ),
    # Holding applies the bounds: maxReplicas lowered to 5 while metrics are missing.
    Case("hold-within-max", {"max_replicas": 5}, [], 8, 0.0, None, 5, METRICS_UNAVAILABLE),
    # Holding applies the bounds: minReplicas raised to 3 while metrics are missing.
    Case("hold-within-min", {"min_replicas": 3}, [], 1, 0.0, None, 3, METRICS_UNAVAILABLE),
    # Leaving fallback: the fallback size is in the scale-down window, so the first good
    # read of an empty queue does not drop the pool at once.
    Case(
        "fallback-exit-smoothed",
        {"fallback": Fallback(failure_threshold=0, replicas=8)},
        [(0.0, obs(0, 0, 4)), (5.0, None)],
        8,
        10.0,
        obs(10, 0, 4),
        8,
        HELD,
        "scale-down window",
    ),
    # scaleUp selectPolicy Disabled (KEDA's paused-scale-out) blocks waking from zero.
    Case(
        "disabled-up-blocks-wake",
        {"behavior": {"scaleUp": {"selectPolicy": "Disabled"}}},
        [],
        0,
        0.0,
        obs(0, 50, 0),
        0,
        HELD,
        "scale-up is Disabled",
    ),
    # ... and growth from one.
    Case(
        "disabled-up-blocks-growth",
        {"behavior": {"scaleUp": {"selectPolicy": "Disabled"}}},
        [],
        1,
        0.0,
        obs(0, 50, 4),
        1,
        HELD,
    ),
    # scaleDown selectPolicy Disabled (KEDA's paused-scale-in) blocks 1 → 0 after cooldown.
    Case(
        "disabled-down-blocks-sleep",
        {"cooldown_period": 0, "behavior": {"scaleDown": {"selectPolicy": "Disabled"}}},
        [(0.0, obs(0))],
        1,
        100.0,
        obs(100),
        1,
        HELD,
    ),
    # ... and 2 → 0 (the case) or any shrink.
    Case(
        "disabled-down-blocks-shrink",
        {"cooldown_period": 0, "behavior": {"scaleDown": {"selectPolicy": "Disabled"}}},
        [(0.0, obs(0))],
        2,
        100.0,
        obs(100),
        2,
        HELD,
        "scale-down is Disabled",
    ),
    # Without the busy probe the floor counts slots: 20 running → 5 workers of 4 slots.
    # With it, when tasks may outlast the grace period (none seen yet), every worker that
    # holds a task stays: 20 tasks on 9 workers keep 9.
    Case(
        "busy-floor",
        {},
        [(0.0, obs(0, 0, 20, busy_replicas=9))],
        10,
        31.0,
        obs(31, 0, 20, busy_replicas=9),
        9,
        SCALED_DOWN,
    ),
    # The floor is a fact of the moment, not a recommendation for the scale-down window to
    # remember: 20 tasks on 9 busy workers at 20 s, then 6 on 3 at 35 s. The window keeps
    # the 5 workers the 20 tasks needed, not the 9 that happened to hold them (which held
    # idle workers for 30 s after each spread: 1.5 times the floor on the heavy-tailed mix).
    Case(
        "busy-floor-not-remembered",
        {},
        [(0.0, obs(0, 0, 20, busy_replicas=9)), (20.0, obs(20, 0, 20, busy_replicas=9))],
        9,
        35.0,
        obs(35, 0, 6, busy_replicas=3),
        5,
        SCALED_DOWN,
        "scale down 9→5",
    ),
    # A good read resets the failure count: two failures, a success, one failure: no fallback.
    Case(
        "fallback-reset",
        {"fallback": Fallback(failure_threshold=2, replicas=6)},
        [(0.0, None), (5.0, obs(5, 0, 16))],
        4,
        10.0,
        None,
        4,
        METRICS_UNAVAILABLE,
    ),
    # Paused: hands off whatever the queue says.
    Case("paused", {"paused": True}, [], 3, 0.0, obs(0, 500, 0), 3, PAUSED),
    # Oldest message past maxWait: every task gets a slot even if rates say fewer would do.
    Case(
        "age-over-max-wait",
        {},
        stream(rate=1.0, service=1.0, start=0.0, seconds=60.0),
        1,
        65.0,
        obs(65, 40, 4, oldest_age=120.0, completed_total=65.0),
        11,
        SCALED_UP,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case) -> None:
    config = make_config(**case.config)
    _, current, state = replay(config, case.before, current=case.current)
    assert current == case.current, "the history must leave the pool at the row's size"
    decisions, replicas, _ = replay(
        config, [(case.now, case.observation)], current=current, state=state
    )
    decision = decisions[-1]
    assert (replicas, decision.reason_code) == (case.replicas, case.code), decision.reason
    assert case.reason_contains in decision.reason


# λ = 10/s of 2.35 s tasks: λS = 23.5 slots; workers have 4 slots; the wait budget is a tenth
# of the 60 s maximum wait. The band runs from the fewest workers that keep up at all (6: 24
# slots) to the fewest that keep P(wait > 6 s) within 5% by Erlang C (7: with 24 slots
# C·exp(-0.5·6/2.35) ≈ 0.25; with 28 slots it is below 0.001).
RATE_CASES = [
    # Cannot keep up (20 slots for 23.5): grow to the high level, 7.
    (5, 7, SCALED_UP),
    # Inside the band (6 or 7 workers): hold; noise in the rates must not move the pool.
    (6, 6, HELD),
    (7, 7, HELD),
    # Above the band: shrink, after the window, to the high level.
    (9, 7, SCALED_DOWN),
]


@pytest.mark.parametrize(("current", "expected", "code"), RATE_CASES)
def test_steady_stream_band(current: int, expected: int, code: str) -> None:
    config = make_config()
    state = PolicyState()
    for now, observation in stream(rate=10.0, service=2.35, start=0.0, seconds=120.0):
        # The size is held at ``current`` throughout, so only the last decision is under test.
        final = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        state = final.state
    assert (final.replicas, final.reason_code) == (expected, code), final.reason
    assert final.demand is not None
    assert final.demand.basis == "rates"
    assert final.demand.service_time == pytest.approx(2.35, rel=0.05)
    assert final.demand.arrival_rate == pytest.approx(10.0, rel=0.05)


CONFIG_ERRORS = [
    # min above max is a contradiction.
    ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas (5) must not exceed maxReplicas (2)"),
    # The fallback size must be reachable.
    (
        {"maxReplicas": 3, "fallback": {"failureThreshold": 2, "replicas": 9}},
        "fallback.replicas (9) must not exceed maxReplicas (3)",
    ),
    # A fallback to zero would let a broken metric stop the pool.
    ({"fallback": {"failureThreshold": 2, "replicas": 0}}, "greater than or equal to 1"),
    # Step policies are required unless the direction is disabled.
    (
        {"behavior": {"scaleUp": {"policies": []}}},
        "policies must list at least one",
    ),
    # Unknown keys are typos, not silently ignored.
    ({"maxReplica": 3}, "Extra inputs are not permitted"),
    # staleAfterSeconds below the polling interval would mark every read stale.
    ({"pollingInterval": 30, "staleAfterSeconds": 10}, "must be at least pollingInterval"),
]


@pytest.mark.parametrize(("spec", "message"), CONFIG_ERRORS)
def test_config_rejected(spec: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    from tide_operator.core.policy import PolicyConfig

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicyConfig.model_validate(spec)


def test_config_from_workerpool_spec() -> None:
    """A WorkerPool spec in camelCase maps onto the config, HPA's field names included."""
    from tide_operator.core.policy import PolicyConfig

    config = PolicyConfig.model_validate(
        {
            "minReplicas": 1,
            "maxReplicas": 20,
            "concurrency": 8,
            "targetBacklogPerWorker": 16,
            "maxWaitSeconds": 30,
            "cooldownPeriod": 120,
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 120,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                }
            },
            "fallback": {"failureThreshold": 3, "replicas": 4},
        }
    )
    assert config.backlog_per_worker == 16
    assert config.behavior.scale_down.policies[0].period_seconds == 60
    # The direction not given keeps Tide's default.
    assert config.behavior.scale_up.policies
    assert config.model_dump(by_alias=True)["behavior"]["scaleDown"]["selectPolicy"] == "Max"


def test_forecast_alone_does_not_hold_an_idle_pool_awake() -> None:
    # A burst of 200 tasks drains, then nothing arrives for ten minutes: the smoothed
    # arrival level decays but never reaches zero. A forecast does not wake a sleeping pool
    # by default, so it must not keep an idle one awake past its cooldown either.
    config = make_config(
        concurrency=2, max_replicas=5, cooldown_period=30.0, forecast={"enabled": True}
    )
    steps = [
        (
            float(t),
            Observation(
                at=float(t),
                waiting=max(0, 200 - 10 * t),
                inflight=2 if t < 20 else 0,
                oldest_age=0.0,
                completed_total=min(200.0, 10.0 * t),
            ),
        )
        for t in range(600)
    ]
    decisions, current, _ = replay(config, steps, current=0)
    assert decisions[0].replicas >= 1
    assert current == 0, decisions[-1].reason


def test_task_ages_are_evidence_only_once_they_cover_a_grace_period() -> None:
    """A busy worker may be drained (the floor counts slots) only once the probe's task ages
    have covered a whole grace period with none past half of it. Before that, a pool whose
    first long task has not yet run 150 s would drain it and lose it at the grace period
    (the simulator's long-short trace, seed 202: two tasks of 5-15 minutes cut)."""
    config = make_config()  # the WorkerPool's 300 s grace period, no longestTaskSeconds
    # 2/s of 2 s tasks: 4 in flight, one worker of four slots by the slot count, spread over
    # three workers; the probe first answers at 100 s, every task seen young.
    state, current = PolicyState(), 3
    for now, observation in stream(rate=2.0, service=2.0, start=0.0, seconds=600.0):
        if now >= 100.0:
            observation = replace(observation, busy_replicas=3, oldest_running_age=10.0)
        decision = decide(
            config=config, state=state, observation=observation, current_replicas=current, now=now
        )
        assert decision.demand is not None
        if now >= 100.0:
            expected = 3 if now < 100.0 + config.grace_period_seconds else 1
            assert decision.demand.inflight_floor == expected, (now, decision.reason)
        state, current = decision.state, decision.replicas
    assert state.ages_since == 100.0
