"""``shutdown.consolidate``: busy workers chosen for scale-in are cordoned (stop consuming)
instead of kept or deleted; the policy sizes the consuming workers; the plan is pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from tide_operator.adapters.targets import DeploymentTarget
from tide_operator.core.policy import Observation, PolicyState
from tide_operator.reconcile.step import reconcile_step
from tide_operator.resources.deployments import (
    CORDONED_ANNOTATION,
    UNKNOWN_BUSY_COST,
    PodLoad,
    plan_consolidation,
)
from tide_operator.resources.spec import WorkerPoolSpec

SPEC = {
    "queues": ["default"],
    "concurrency": 4,
    "scaleTargetRef": {"name": "workers"},
    "maxReplicas": 20,
    # Tasks may run an hour: without consolidation a busy worker is kept (300 s grace).
    "shutdown": {"longestTaskSeconds": 3600, "consolidate": True},
    "metrics": {"exporter": {"url": "http://exporter:9808/metrics"}},
}

PODS = [PodLoad("a", 0), PodLoad("b", 1), PodLoad("c", 3), PodLoad("d", 0), PodLoad("e", 2)]


@pytest.mark.parametrize(
    ("cordoned", "current", "desired", "replicas", "cordon", "reopen", "remove"),
    [
        # Shrinking 5 -> 1: the idle go, then the least busy are cordoned (b, e); the
        # busiest keeps consuming; the Deployment keeps the two cordoned: 1 + 2.
        (set(), 5, 1, 3, ("b", "e"), (), ("a", "d")),
        # Shrinking 5 -> 3: the two idle suffice, nothing is cordoned.
        (set(), 5, 3, 3, (), (), ("a", "d")),
        # A cordoned worker that finished (d) goes; a busy one (e) stays cordoned.
        ({"d", "e"}, 5, 3, 4, (), (), ("d",)),
        # Growing: cordoned workers consume again, busiest first, before any new pod.
        ({"d", "e"}, 5, 4, 4, (), ("e",), ("d",)),
        ({"d", "e"}, 5, 5, 5, (), ("e", "d"), ()),
        ({"d", "e"}, 5, 7, 7, (), ("e", "d"), ()),
        # Steady: nothing moves but the idle cordoned worker.
        ({"d"}, 5, 4, 4, (), (), ("d",)),
    ],
)
def test_plan(
    cordoned: set[str],
    current: int,
    desired: int,
    replicas: int,
    cordon: tuple[str, ...],
    reopen: tuple[str, ...],
    remove: tuple[str, ...],
) -> None:
    plan = plan_consolidation(PODS, cordoned=frozenset(cordoned), current=current, desired=desired)
    assert (plan.replicas, plan.cordon, plan.reopen, plan.remove) == (
        replicas,
        cordon,
        reopen,
        remove,
    )
    # The ReplicaSet removes current - replicas pods, the lowest costs first: exactly the
    # ones planned to go, never a worker that runs or finishes a task.
    cost = {p.name: plan.costs.get(p.name, p.current_cost or 0) for p in PODS}
    going = sorted(cost, key=lambda n: cost[n])[: max(0, current - replicas)]
    assert set(going) == set(remove)
    kept_busy = (set(cordoned) - set(reopen) - set(remove)) | set(cordon)
    assert all(cost[n] == UNKNOWN_BUSY_COST for n in kept_busy)


def test_workers_that_did_not_answer_are_neither_cordoned_nor_chosen() -> None:
    pods = [PodLoad("a", None), PodLoad("b", 2)]
    plan = plan_consolidation(pods, cordoned=frozenset(), current=2, desired=0)
    assert plan.cordon == ("b",)
    assert plan.remove == ()
    # b is held back; the one the ReplicaSet takes is a, whatever the probe could not tell.
    assert plan.replicas == 1


class Source:
    def __init__(self, inflight: int) -> None:
        self.inflight = inflight

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        return Observation(at=now, waiting=0, inflight=self.inflight)


class Target:
    """A consolidating target: records what the step asked of it."""

    def __init__(self, replicas: int, cordoned: int) -> None:
        self.replicas = replicas
        self.held = cordoned
        self.calls: list[tuple[int, int]] = []
        self.scaled: list[int] = []
        self.asked = self.marked = False

    can_consolidate = True

    async def current(self) -> int:
        return self.replicas

    async def scale(self, replicas: int, *, reason: str) -> None:
        self.scaled.append(replicas)
        self.replicas = replicas

    async def mark_idle_first(self, count: int) -> None:
        self.marked = True

    async def busy_replicas(self) -> int | None:
        # Every worker holds a task.
        self.asked = True
        return self.replicas

    async def cordoned(self) -> int:
        return self.held

    async def consolidate(
        self, desired: int, *, current: int, queues: Sequence[str], reason: str
    ) -> int:
        assert list(queues) == ["default"]
        self.calls.append((desired, current))
        # As the Deployment target would: the busy ones beyond ``desired`` are cordoned.
        self.replicas = desired + self.held
        return self.replicas


async def run(target: Target, spec: WorkerPoolSpec, *, inflight: int, steps: int) -> None:
    state = PolicyState()
    for step in range(steps):
        result = await reconcile_step(
            spec=spec,
            source=Source(inflight=inflight),
            target=target,
            state=state,
            now=5.0 * step,
            wall=datetime.now(UTC),
        )
        state = result.state


@pytest.mark.asyncio
async def test_the_policy_sizes_the_consuming_workers() -> None:
    # 10 replicas, 2 of them cordoned; 20 tasks in flight need 5 workers of 4 slots.
    target = Target(10, cordoned=2)
    await run(target, WorkerPoolSpec.model_validate(SPEC), inflight=20, steps=10)
    # The policy moved from the 8 consuming workers, not the 10 of the Deployment.
    assert target.calls[0] == (8, 10)
    assert target.calls[-1][0] == 5
    assert target.replicas == 5 + 2
    assert not target.asked
    assert not target.marked


@pytest.mark.asyncio
async def test_without_consolidate_the_busy_floor_stands() -> None:
    spec = {**SPEC, "shutdown": {"longestTaskSeconds": 3600}}
    target = Target(10, cordoned=0)
    await run(target, WorkerPoolSpec.model_validate(spec), inflight=20, steps=10)
    # Every worker holds a task that may outlast the grace period: all ten stay.
    assert target.calls == []
    assert target.asked
    assert target.replicas == 10


def test_own_cordons_count_before_the_pod_reads_show_them() -> None:
    # The pods come from a watch's index, which may show a write a tick late: the target's
    # own cordons and reopenings stand until the reads agree, then are forgotten.
    writes = {"a": True, "b": False}
    target = DeploymentTarget(
        None,  # type: ignore[arg-type]  # no API call is made here
        namespace="default",
        name="workers",
        cordon_writes=writes,
    )

    def pod(name: str, cordoned: bool) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "annotations": {CORDONED_ANNOTATION: "true"} if cordoned else {},
            }
        }

    assert [target._is_cordoned(p) for p in (pod("a", False), pod("b", True), pod("c", True))] == [
        True,
        False,
        True,
    ]
    assert writes == {"a": True, "b": False}
    assert target._is_cordoned(pod("a", True))
    assert writes == {"b": False}
