"""Before a scale-down the step asks which workers hold tasks, and keeps those replicas."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from tide_operator.adapters.sources import MetricsUnavailable
from tide_operator.adapters.targets import oldest_task_age
from tide_operator.core.policy import FALLBACK, Observation, PolicyState
from tide_operator.reconcile.step import reconcile_step
from tide_operator.resources.spec import WorkerPoolSpec

pytestmark = pytest.mark.asyncio

SPEC = WorkerPoolSpec.model_validate(
    {
        "queues": ["default"],
        "concurrency": 4,
        "scaleTargetRef": {"name": "workers"},
        "maxReplicas": 20,
        # Tasks may run an hour: a busy worker must not be drained (300 s grace).
        "shutdown": {"longestTaskSeconds": 3600},
        "metrics": {"exporter": {"url": "http://exporter:9808/metrics"}},
    }
)


class Source:
    def __init__(self, inflight: int) -> None:
        self.inflight = inflight

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        return Observation(at=now, waiting=0, inflight=self.inflight)


class Target:
    """A target with ``busy_replicas``; it records what it was asked and told."""

    def __init__(self, replicas: int, busy: int | None) -> None:
        self.replicas = replicas
        self.busy = busy
        self.asked = 0
        self.scaled: list[int] = []

    async def current(self) -> int:
        return self.replicas

    async def scale(self, replicas: int, *, reason: str) -> None:
        self.scaled.append(replicas)
        self.replicas = replicas

    async def mark_idle_first(self, count: int) -> None:
        return None

    async def busy_replicas(self) -> int | None:
        self.asked += 1
        return self.busy


async def run(target: Target, source: Source, *, steps: int) -> PolicyState:
    state = PolicyState()
    for step in range(steps):
        result = await reconcile_step(
            spec=SPEC,
            source=source,
            target=target,
            state=state,
            now=5.0 * step,
            wall=datetime.now(UTC),
        )
        state = result.state
    return state


@pytest.mark.parametrize(
    ("busy", "expected"),
    [
        # 20 tasks spread over 9 of 10 workers: the 9 stay (a slot count would say 5).
        (9, 9),
        # The probe cannot tell (workers not named worker@<pod>): the slot count, 5.
        (None, 5),
    ],
)
async def test_scale_down_keeps_workers_holding_tasks(busy: int | None, expected: int) -> None:
    target = Target(10, busy)
    # Past the 30 s scale-down window.
    await run(target, Source(inflight=20), steps=10)
    assert target.replicas == expected
    assert target.asked >= 1


async def test_the_probe_runs_only_on_scale_downs() -> None:
    target = Target(5, busy=5)
    await run(target, Source(inflight=20), steps=10)
    assert target.replicas == 5
    assert target.asked == 0


# The same pool with KEDA's fallback: after 2 failed reads, 1 worker (never fewer than held
# tasks at the last good read, the policy's own rule).
FALLBACK_SPEC = WorkerPoolSpec.model_validate(
    {
        **SPEC.model_dump(by_alias=True, exclude_none=True),
        "fallback": {"failureThreshold": 2, "replicas": 1},
    }
)


class Outage:
    """One good read (``inflight`` tasks), then the metrics backend is gone."""

    def __init__(self, inflight: int) -> None:
        self.inflight = inflight
        self.reads = 0

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        self.reads += 1
        if self.reads > 1:
            raise MetricsUnavailable("Prometheus unreachable")
        return Observation(at=now, waiting=0, inflight=self.inflight)


@pytest.mark.parametrize(
    ("busy", "expected"),
    [
        # 8 tasks at the last good read (2 workers' worth); a third worker took tasks
        # since: all 3 hold tasks, all 3 stay (the fallback alone went to 2).
        (3, 3),
        # Only 2 hold tasks now: the fallback's 2 (1, but never below the last read's 2).
        (2, 2),
        # The probe cannot tell: the fallback as the policy decided it.
        (None, 2),
    ],
)
async def test_a_fallback_keeps_workers_that_took_tasks_since_the_last_read(
    busy: int | None, expected: int
) -> None:
    target = Target(3, busy)
    source = Outage(inflight=8)
    state = PolicyState()
    for step in range(6):
        result = await reconcile_step(
            spec=FALLBACK_SPEC,
            source=source,
            target=target,
            state=state,
            now=5.0 * step,
            wall=datetime.now(UTC),
        )
        state = result.state
    assert result.decision is not None
    assert result.decision.reason_code == FALLBACK
    assert target.replicas == expected


class AgingTarget(Target):
    """A target whose probe also says how long the longest-running task has run."""

    def __init__(self, replicas: int, busy: int, age: float) -> None:
        super().__init__(replicas, busy)
        self.age = age

    async def busy_replicas_with_age(self) -> tuple[int | None, float | None]:
        self.asked += 1
        return self.busy, self.age


async def test_the_probes_task_ages_reach_the_policy() -> None:
    # Nothing declared: the policy learns how long tasks run from the probe's answers.
    spec = SPEC.model_copy(
        update={"shutdown": SPEC.shutdown.model_copy(update={"longest_task_seconds": None})}
    )
    target = AgingTarget(10, busy=9, age=420.0)
    state = PolicyState()
    for step in range(10):
        result = await reconcile_step(
            spec=spec,
            source=Source(inflight=20),
            target=target,
            state=state,
            now=5.0 * step,
            wall=datetime.now(UTC),
        )
        state = result.state
    assert target.asked >= 1
    # A task has run 420 s, past half the 300 s grace period: busy workers stay.
    assert state.longest_running == 420.0
    assert target.replicas == 9


async def test_oldest_task_age_reads_celerys_start_times() -> None:
    active = {
        "worker@a": [{"id": "1", "time_start": 1000.0}, {"id": "2", "time_start": 1090.5}],
        "worker@b": [{"id": "3", "time_start": None}],  # accepted, not started
        "worker@c": [],
        "worker@d": [{"id": "4", "time_start": True}, "garbage"],
    }
    assert oldest_task_age(active, now=1100.0) == 100.0
    assert oldest_task_age({"worker@b": active["worker@b"]}, now=1100.0) is None
    # A worker clock ahead of ours gives no negative age.
    assert oldest_task_age({"worker@a": [{"time_start": 1200.0}]}, now=1100.0) == 0.0
