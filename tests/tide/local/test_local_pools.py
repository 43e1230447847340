"""WorkerPool files for local mode: the example loads, bad files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tide.local.pools import PoolFileError, load_pools


def test_example_pool_loads() -> None:
    (pool,) = load_pools(None)
    assert (pool.name, pool.concurrency, pool.policy.min_replicas) == ("default", 2, 0)
    assert "default" in pool.queues


def test_the_example_manifests_load_too() -> None:
    examples = sorted((Path(__file__).parents[3] / "manifests" / "examples").glob("*.yaml"))
    for path in examples:
        assert load_pools(path), path


GOOD = "apiVersion: tide.dev/v1alpha1\nkind: WorkerPool\nmetadata: {name: p}\n"
WORKLOAD = "template: {image: tide}, metrics: {exporter: {url: 'http://x:9808/metrics'}}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Not YAML at all.
        ("kind: [", "not YAML"),
        # Another kind of resource.
        ("kind: Deployment\nmetadata: {name: p}\nspec: {queues: [a]}", "not WorkerPool"),
        # No queues to consume.
        (GOOD + "spec: {maxReplicas: 2, " + WORKLOAD + "}", "queues"),
        # minReplicas above maxReplicas: the policy model refuses it.
        (
            GOOD + "spec: {queues: [a], minReplicas: 5, maxReplicas: 2, " + WORKLOAD + "}",
            "minReplicas",
        ),
        # A field the resource does not have.
        (GOOD + "spec: {queues: [a], maxReplica: 2, " + WORKLOAD + "}", "maxReplica"),
        # Two pools with one name.
        (
            GOOD
            + "spec: {queues: [a], "
            + WORKLOAD
            + "}\n---\n"
            + GOOD
            + "spec: {queues: [b], "
            + WORKLOAD
            + "}",
            "repeat",
        ),
        # Neither a template nor a scaleTargetRef: invalid in the cluster, so here too.
        (GOOD + "spec: {queues: [a], metrics: {exporter: {url: 'http://x'}}}", "template"),
        # An empty file.
        ("", "no WorkerPool"),
    ],
)
def test_bad_pool_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(text)
    with pytest.raises(PoolFileError, match=message):
        load_pools(path)
