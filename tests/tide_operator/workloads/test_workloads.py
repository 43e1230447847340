"""Reads from the watches' indexes, with the operator's own writes on top until they show.

The indexes are plain dicts shaped as kopf's (key -> the values of the objects under it),
changed by the test the way kopf's watch changes them; the clock is the test's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tide_operator.adapters.workloads import (
    WRITE_OVERLAY_SECONDS,
    SharedLists,
    Workloads,
    newer_or_same,
    trim_deployment,
    trim_pod,
)

NS = "tide"
Indexes = tuple[dict[Any, list[Any]], dict[Any, list[Any]]]


def deployment(name: str, *, replicas: int, version: str, uid: str = "u1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "resourceVersion": version,
            "annotations": {
                "tide.dev/template-hash": "abc",
                "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 5000 + "}",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        "status": {"replicas": replicas, "readyReplicas": replicas},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def indexes() -> Indexes:
    return {}, {}


@pytest.fixture
def workloads(clock: Clock, indexes: Indexes) -> Workloads:
    found = Workloads(clock=clock)
    assert not found.watching
    found.bind(deployments=indexes[0], pods=indexes[1])
    assert found.watching
    return found


def test_trimmed_deployment_keeps_what_pools_read_and_drops_the_bulk() -> None:
    trimmed = trim_deployment(deployment("w", replicas=3, version="7"))
    assert trimmed["metadata"]["annotations"] == {"tide.dev/template-hash": "abc"}
    assert "managedFields" not in trimmed["metadata"]
    assert trimmed["spec"]["replicas"] == 3
    assert trimmed["status"]["readyReplicas"] == 3
    assert len(str(trimmed)) < 500


def test_trimmed_pod_keeps_name_labels_cost_readiness_and_termination() -> None:
    pod = {
        "metadata": {
            "name": "w-1",
            "namespace": NS,
            "uid": "p1",
            "labels": {"app": "w"},
            "annotations": {"controller.kubernetes.io/pod-deletion-cost": "3", "other": "x"},
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "worker", "image": "tide"}]},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ]
        },
    }
    trimmed = trim_pod(pod)
    assert trimmed["metadata"]["annotations"] == {"controller.kubernetes.io/pod-deletion-cost": "3"}
    assert trimmed["metadata"]["deletionTimestamp"]
    assert trimmed["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert "spec" not in trimmed


def test_versions_compare_as_numbers_when_they_are_numbers() -> None:
    assert newer_or_same("10", "9")  # not as text: "10" < "9"
    assert newer_or_same("9", "9")
    assert not newer_or_same("8", "9")
    assert newer_or_same("abc", "abc")
    assert not newer_or_same("abd", "abc")
    assert not newer_or_same(None, "1")


def test_a_scale_shows_until_the_watch_reports_it(
    workloads: Workloads, indexes: Indexes, clock: Clock
) -> None:
    deployments, _ = indexes
    deployments[(NS, "w")] = [trim_deployment(deployment("w", replicas=1, version="5"))]
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 1  # type: ignore[index]
    workloads.scaled(NS, "w", 4, version="9")
    # The watch is behind (or down, however long): the operator's own write stands.
    clock.now += 10 * WRITE_OVERLAY_SECONDS
    found = workloads.deployment(NS, "w")
    assert found is not None
    assert found["spec"]["replicas"] == 4
    assert found["status"]["readyReplicas"] == 1  # the rest as the watch saw it
    # The watch reports the write, then someone else's change after it: theirs shows.
    deployments[(NS, "w")] = [trim_deployment(deployment("w", replicas=4, version="9"))]
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 4  # type: ignore[index]
    deployments[(NS, "w")] = [trim_deployment(deployment("w", replicas=2, version="12"))]
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 2  # type: ignore[index]


def test_an_incomparable_version_stands_in_only_for_a_while(
    workloads: Workloads, indexes: Indexes, clock: Clock
) -> None:
    deployments, _ = indexes
    deployments[(NS, "w")] = [trim_deployment(deployment("w", replicas=1, version="a5"))]
    workloads.scaled(NS, "w", 4, version="a9")
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 4  # type: ignore[index]
    clock.now += WRITE_OVERLAY_SECONDS + 1
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 1  # type: ignore[index]


def test_a_created_deployment_exists_before_the_watch_sees_it(workloads: Workloads) -> None:
    assert workloads.deployment(NS, "w") is None
    workloads.wrote(deployment("w", replicas=0, version="3"))
    found = workloads.deployment(NS, "w")
    assert found is not None
    assert found["metadata"]["uid"] == "u1"
    workloads.scaled(NS, "w", 2, version="4")
    assert workloads.deployment(NS, "w")["spec"]["replicas"] == 2  # type: ignore[index]


def test_a_deletion_the_index_missed_is_honoured(workloads: Workloads, indexes: Indexes) -> None:
    deployments, _ = indexes
    deployments[(NS, "w")] = [trim_deployment(deployment("w", replicas=1, version="5"))]
    workloads.vanished(NS, "w")
    assert workloads.deployment(NS, "w") is None
    # A new Deployment of that name (another uid) is seen again; of two, the newest wins.
    deployments[(NS, "w")].append(
        trim_deployment(deployment("w", replicas=3, version="11", uid="u2"))
    )
    assert workloads.deployment(NS, "w")["metadata"]["uid"] == "u2"  # type: ignore[index]


def test_pods_are_selected_by_label(workloads: Workloads, indexes: Indexes) -> None:
    _, pods = indexes

    def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
        meta = {"name": name, "namespace": NS, "uid": name, "labels": labels}
        return trim_pod({"metadata": meta})

    pods[NS] = [
        pod("b", {"app": "w", "tier": "x"}),
        pod("a", {"app": "w"}),
        pod("c", {"app": "other"}),
    ]
    pods["elsewhere"] = [pod("d", {"app": "w"})]
    assert [p["metadata"]["name"] for p in workloads.pods(NS, {"app": "w"})] == ["a", "b"]
    assert workloads.pods(NS, {"app": "none"}) == []


@pytest.mark.asyncio
async def test_one_list_serves_every_reader_within_its_age() -> None:
    clock = Clock()
    lists = SharedLists(max_age=60, clock=clock)
    fetched = 0

    async def fetch() -> list[Any]:
        nonlocal fetched
        fetched += 1
        await asyncio.sleep(0)
        return [{"metadata": {"name": "a", "uid": "1"}}, {"metadata": {"name": "b", "uid": "2"}}]

    found = await asyncio.gather(*(lists.names("/x", fetch=fetch) for _ in range(100)))
    assert fetched == 1
    assert found[0] == {"a": "1", "b": "2"}
    clock.now += 61
    await lists.names("/x", fetch=fetch)
    await lists.names("/y", fetch=fetch)
    assert fetched == 3

    async def broken() -> list[Any]:
        raise ConnectionError("refused")

    clock.now += 61
    with pytest.raises(ConnectionError):
        await lists.names("/x", fetch=broken)
    # A failed LIST is not kept: the next reader tries again.
    assert await lists.names("/x", fetch=fetch) == {"a": "1", "b": "2"}
