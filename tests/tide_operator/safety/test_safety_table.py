"""``resources.safety``: what makes scale-in unsafe, from the spec, an adopted pod template
and what the workers say they run. Table-driven; every row says what it proves."""

from __future__ import annotations

from typing import Any

import pytest

from tide_celery.layout import NODE_NAME, TransportOptionsError
from tide_operator.edge.handlers import busy_probe_from_env
from tide_operator.resources.deployments import HOSTNAME_PREFIX
from tide_operator.resources.safety import (
    WorkerFacts,
    WorkerReport,
    adopted_hazards,
    node_name_of,
    report_from_inspect,
    scale_in_hazards,
    workers_status,
)
from tide_operator.resources.spec import WorkerPoolSpec


def spec(**fields: Any) -> WorkerPoolSpec:
    body: dict[str, Any] = {
        "queues": ["orders"],
        "concurrency": 2,
        "scaleTargetRef": {"name": "stock"},
        "metrics": {"exporter": {"url": "http://e:9808"}},
        "shutdown": {"gracePeriodSeconds": 300},
    }
    body.update(fields)
    return WorkerPoolSpec.model_validate(body)


def worker(node: str = "worker@a", **fields: Any) -> WorkerReport:
    values: dict[str, Any] = {
        "acks_late": True,
        "prefetch_multiplier": 1,
        "concurrency": 2,
        "integration": False,
    }
    values.update(fields)
    return WorkerReport(node=node, **values)


def template(*, grace: int | None = None, args: list[str] | None = None, **c: Any) -> dict:
    container: dict[str, Any] = {"name": "worker", "image": "stock:1", **c}
    if args is not None:
        container["args"] = args
    pod: dict[str, Any] = {"containers": [container]}
    if grace is not None:
        pod["terminationGracePeriodSeconds"] = grace
    return {"spec": pod}


WORKER_ARGS = ["celery", "-A", "stockapp", "worker", "-Q", "orders"]

OBSERVED = [
    # Late acks, prefetch 1, the declared slots: nothing to say.
    ([worker()], []),
    # Celery's defaults (early acks, prefetch 4), whatever the pool declares: both found.
    ([worker(acks_late=False, prefetch_multiplier=4)], ["early acks", "prefetch 4"]),
    # Early acks with the integration: running tasks are counted, so that alone is safe.
    ([worker(acks_late=False, integration=True)], []),
    # One early-ack worker among late ones is enough, and the count says which share.
    ([worker("worker@a"), worker("worker@b", acks_late=False)], ["1 of 2 workers run early"]),
    # Fewer slots than declared: the policy would count busy workers as idle capacity.
    ([worker(concurrency=1)], ["workers run 1 slots each, the pool declares 2"]),
    # More slots than declared only over-provisions: not a scale-in hazard.
    ([worker(concurrency=8)], []),
    # worker_disable_prefetch: nothing reserved ahead, whatever the multiplier says.
    ([worker(prefetch_multiplier=4, prefetch_disabled=True)], []),
]


@pytest.mark.parametrize(("answered", "expected"), OBSERVED)
def test_hazards_from_what_workers_run(answered: list[WorkerReport], expected: list[str]) -> None:
    # The spec declares the safe settings: only what the workers say can raise a hazard.
    found = scale_in_hazards(spec(), facts=WorkerFacts(answered=tuple(answered)))
    assert len(found) == len(expected), found
    for text, hazard in zip(expected, found, strict=True):
        assert text in hazard


def test_declared_settings_stand_in_until_a_worker_answers() -> None:
    declared = spec(worker={"acksLate": False, "prefetchMultiplier": 4})
    # Nobody asked (no probe, or zero replicas): the declarations are all there is.
    assert [h.split(" ")[0] for h in scale_in_hazards(declared)] == [
        "worker.acksLate",
        "worker.prefetchMultiplier",
    ]
    # Workers answered: their truth replaces the declarations, in both directions.
    assert scale_in_hazards(declared, facts=WorkerFacts(answered=(worker(),))) == ()


def test_silent_workers_are_reported_as_unaddressable() -> None:
    found = scale_in_hazards(spec(), facts=WorkerFacts(silent=("worker@a", "worker@b")))
    assert any("no worker answered as worker@<pod name> (2 asked)" in h for h in found)
    # Some answered: the silent ones are pods still starting, not a naming problem.
    found = scale_in_hazards(spec(), facts=WorkerFacts(answered=(worker(),), silent=("worker@b",)))
    assert found == ()


ADOPTED = [
    # Kubernetes' default grace (30 s) under the pool's 300 s: named, with the fix.
    (template(args=WORKER_ARGS), ["terminationGracePeriodSeconds (30)"]),
    # A grace period as long as the pool's, and no -n (the integration may name them).
    (template(grace=300, args=WORKER_ARGS), []),
    # -n worker@%h, as the docs ask: addressable.
    (template(grace=600, args=[*WORKER_ARGS, "-n", "worker@%h"]), []),
    # --hostname=celery@%h: the operator would ask worker@<pod> and nobody would answer.
    (template(grace=600, args=[*WORKER_ARGS, "--hostname=celery@%h"]), ["'celery@%h'"]),
    # The worker started through a shell script: the name is found inside it.
    (
        template(grace=600, command=["sh", "-c"], args=["exec celery -A s worker -n w1@%h"]),
        ["'w1@%h'"],
    ),
    # A sidecar's -n is none of the worker's business.
    (template(grace=600, args=["proxy", "-n", "x"]), []),
]


@pytest.mark.parametrize(("pod_template", "expected"), ADOPTED)
def test_adopted_pod_template(pod_template: dict, expected: list[str]) -> None:
    found = adopted_hazards(pod_template, spec())
    assert len(found) == len(expected), found
    for text, hazard in zip(expected, found, strict=True):
        assert text in hazard


NAMES = [
    (["-n", "worker@%h"], "worker@%h"),
    (["--hostname", "worker@$(POD_NAME)"], "worker@$(POD_NAME)"),
    (["-nworker@%h"], "worker@%h"),
    (["--hostname=a@b"], "a@b"),
    ([], None),
]


@pytest.mark.parametrize(("args", "name"), NAMES)
def test_node_name_of(args: list[str], name: str | None) -> None:
    assert node_name_of({"args": ["worker", *args]}) == name


def test_report_from_real_answers() -> None:
    # The shapes Celery 5.x answers: conf with defaults, stats with the pool.
    conf = {"task_acks_late": False, "worker_prefetch_multiplier": 4, "worker_concurrency": None}
    stats = {"pool": {"max-concurrency": 3}, "prefetch_count": 12}
    report = report_from_inspect("worker@a", conf=conf, stats=stats, integration=None)
    assert report == WorkerReport("worker@a", False, 4, 3, None)
    assert workers_status(WorkerFacts(answered=(report,))) == {
        "answered": 1,
        "acksLate": False,
        "prefetchMultiplier": 4,
        "integration": False,
        "concurrency": 3,
    }
    assert workers_status(WorkerFacts(silent=("worker@a",))) is None


def test_the_operator_addresses_the_name_the_integration_gives() -> None:
    # Two homes for one word would drift: the integration names a worker started without
    # -n "worker@<host>", the operator asks "worker@<pod name>".
    assert f"{NODE_NAME}@" == HOSTNAME_PREFIX


PROBE_ENV = [
    # The app's transport options, as JSON: used as they are, nothing of Tide's added.
    (
        {"TIDE_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "app:"}'},
        {"global_keyprefix": "app:"},
    ),
    # Tide's own key prefix variable (the chart's config.brokerKeyPrefix) alone.
    ({"CELERY_BROKER_KEYPREFIX": "tide:"}, {"global_keyprefix": "tide:"}),
    # Both: the prefix variable wins, as in Tide's settings (docs/configuration.md).
    (
        {
            "TIDE_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "a:"}',
            "CELERY_BROKER_KEYPREFIX": "t:",
        },
        {"global_keyprefix": "t:"},
    ),
    # Neither: kombu's defaults, which a stock app runs.
    ({}, {}),
]


@pytest.mark.parametrize(("env", "options"), PROBE_ENV)
def test_probe_takes_the_workers_transport_options(
    env: dict[str, str], options: dict[str, Any]
) -> None:
    probe = busy_probe_from_env({"CELERY_BROKER_URL": "redis://127.0.0.1:6379/7", **env})
    assert probe is not None
    assert dict(probe.transport_options) == options
    probe.close()


def test_probe_refuses_unreadable_transport_options() -> None:

    with pytest.raises(TransportOptionsError, match="JSON object"):
        busy_probe_from_env(
            {"CELERY_BROKER_URL": "redis://x", "TIDE_BROKER_TRANSPORT_OPTIONS": "prefix=a:"}
        )
    # No broker, no probe: idle-first marking is skipped, the declarations stand in.
    assert busy_probe_from_env({}) is None
