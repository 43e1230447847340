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


def test_a_pool_without_metrics_loads(tmp_path: Path) -> None:
    # The docs say local mode ignores ``metrics``: a file written for it may leave it out.
    path = tmp_path / "pools.yaml"
    path.write_text(GOOD + "spec: {queues: [a], template: {image: tide}}")
    (pool,) = load_pools(path)
    assert pool.queues == ("a",)


def test_errors_read_as_sentences_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(
        GOOD + "spec: {queues: [a], maxReplicas: 0, concurency: 2, template: {image: tide}}"
    )
    with pytest.raises(PoolFileError) as caught:
        load_pools(path)
    message = str(caught.value)
    assert "WorkerPool 'p' is invalid" in message
    # One line per problem, the field as written in the file, the value the file gave.
    assert "spec.maxReplicas: " in message
    assert "(the file says 0)" in message
    assert "spec.concurency: not a WorkerPool field (misspelt?)" in message
    # Not pydantic's report: no error counts, no type names, no documentation links.
    assert "validation error" not in message
    assert "type=" not in message
    assert "errors.pydantic.dev" not in message


PROGRAMS = [
    # No template app or command: the app tide up runs (--app, or Tide's).
    ("{}", ["celery", "-A", "proj", "worker"], "proj"),
    # The pool names its app: that one, whatever --app says.
    ("{app: other.celery}", ["celery", "-A", "other.celery", "worker"], "other.celery"),
    # A command line of its own: run as written; its -A is the app checked.
    (
        "{command: [celery], args: [-A, mine, worker, --pool, solo]}",
        ["celery", "-A", "mine", "worker", "--pool", "solo"],
        "mine",
    ),
    # A wrapper with the app named beside it.
    ("{command: [./run-worker.sh], app: mine}", ["./run-worker.sh"], "mine"),
]


@pytest.mark.parametrize(("template", "argv", "app"), PROGRAMS)
def test_a_pools_worker_program(tmp_path: Path, template: str, argv: list[str], app: str) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(GOOD + f"spec: {{queues: [a], template: {template}}}\n")
    (pool,) = load_pools(path)
    assert pool.worker_program("proj") == (argv, app)
