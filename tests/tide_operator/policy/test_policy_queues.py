"""Service times learnt per queue: when a pool's mix of queues shifts, the offered load is the
sum of each queue's rate times its own service time, not the pooled mean of the last ten
minutes (which lags by minutes and sizes short tasks as if they were long)."""

from __future__ import annotations

from tide_operator.core.policy import (
    Observation,
    PolicyConfig,
    PolicyState,
    QueueObservation,
    decide,
)

CONFIG = PolicyConfig(concurrency=4, max_replicas=100, max_wait_seconds=60, min_replicas=1)
SERVICE = {"emails": 1.0, "reports": 60.0}
STEP = 5.0


def replay(phases: list[tuple[float, dict[str, float]]], *, per_queue: bool) -> list[int]:
    """Recommendations every step over ``phases`` of (seconds, arrivals/s per queue), with a
    pool in steady state (fluid model: in flight = rate times service time, nothing waits)."""
    state = PolicyState()
    totals = dict.fromkeys(SERVICE, 0.0)
    now, current = 0.0, 10
    out = []
    for seconds, rates in phases:
        for _ in range(int(seconds / STEP)):
            now += STEP
            for queue, rate in rates.items():
                totals[queue] += rate * STEP
            inflight = {q: round(rates[q] * SERVICE[q]) for q in SERVICE}
            queues = tuple(
                QueueObservation(q, waiting=0, inflight=inflight[q], completed_total=totals[q])
                for q in SERVICE
            )
            observation = Observation(
                at=now,
                waiting=0,
                inflight=sum(inflight.values()),
                completed_total=sum(totals.values()),
                queues=queues if per_queue else (),
            )
            decision = decide(
                config=CONFIG, state=state, observation=observation, current_replicas=current,
                now=now,
            )  # fmt: skip
            state, current = decision.state, decision.replicas
            assert decision.demand is not None
            out.append(decision.demand.recommendation)
    return out


def test_a_shift_to_short_tasks_is_sized_at_once() -> None:
    # Twenty minutes of reports (31 slots of load), then emails: 9/s of 1 s and 0.05/s of
    # 60 s tasks, 12 slots of load: 3 replicas of 4 slots, plus the wait headroom.
    phases = [
        (1200.0, {"emails": 1.0, "reports": 0.5}),
        (90.0, {"emails": 9.0, "reports": 0.05}),
    ]
    queues = replay(phases, per_queue=True)
    pooled = replay(phases, per_queue=False)
    # A minute and a half after the shift, per queue: the load of the new mix.
    assert queues[-1] <= 6
    # The pooled mean still weighs the reports of the last ten minutes: several times more.
    assert pooled[-1] >= 3 * queues[-1]


def test_one_queue_reads_the_same_as_the_pool() -> None:
    # Without per-queue figures (one queue, or a source without them) nothing changes.
    phases = [(600.0, {"emails": 4.0, "reports": 0.1})]
    assert replay(phases, per_queue=True)[-1] == replay(phases, per_queue=False)[-1]
