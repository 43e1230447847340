"""The CRD: generated from the models, committed as generated, and validating like them.

Each row of the table is a spec that the CRD (schema + CEL) and the pydantic models must
both accept, or both refuse with the given message, so the two sources cannot drift.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from crd_admission import EXAMPLES, load_examples
from pydantic import ValidationError

from tide_operator.resources.crd import CRD_PATH, build_crd, render_crd_yaml
from tide_operator.resources.spec import NAME_MESSAGE, WorkerPool, WorkerPoolSpec

BASE: dict[str, Any] = {
    "apiVersion": "tide.dev/v1alpha1",
    "kind": "WorkerPool",
    "metadata": {"name": "p", "namespace": "n"},
    "spec": {
        "queues": ["default"],
        "template": {"image": "tide:1"},
        "metrics": {"exporter": {"url": "http://exporter:9808/metrics"}},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    return body


CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # The minimal owned pool is valid.
    ("minimal", with_spec(), None),
    # An adopted Deployment instead of a template is valid.
    ("adopted", with_spec(template=None, scaleTargetRef={"name": "d"}), None),
    # Scale to zero with a cooldown and an activation threshold is valid.
    ("zero", with_spec(minReplicas=0, cooldownPeriod=300, activationThreshold=3), None),
    # Both a template and a scaleTargetRef: which Deployment would it scale?
    (
        "both-targets",
        with_spec(scaleTargetRef={"name": "d"}),
        "set exactly one of template or scaleTargetRef",
    ),
    # Neither: nothing to scale.
    ("no-target", with_spec(template=None), "set exactly one of template or scaleTargetRef"),
    # minReplicas above maxReplicas can never be satisfied.
    (
        "min-above-max",
        with_spec(minReplicas=5, maxReplicas=2),
        "minReplicas must not exceed maxReplicas",
    ),
    # minReplicas above the default maxReplicas (10) is caught too.
    ("min-above-default-max", with_spec(minReplicas=11), "minReplicas must not exceed maxReplicas"),
    # A fallback larger than the pool.
    (
        "fallback-above-max",
        with_spec(maxReplicas=3, fallback={"failureThreshold": 2, "replicas": 4}),
        "fallback.replicas must not exceed maxReplicas",
    ),
    # Observations would always be stale.
    (
        "stale-below-polling",
        with_spec(pollingInterval=30, staleAfterSeconds=10),
        "staleAfterSeconds must be at least pollingInterval",
    ),
    # Two metric sources at once.
    (
        "two-sources",
        with_spec(
            metrics={
                "exporter": {"url": "http://e:9808"},
                "prometheus": {"url": "http://p:9090"},
            }
        ),
        "set exactly one of prometheus or exporter",
    ),
    # No metric source.
    ("no-source", with_spec(metrics={}), "set exactly one of prometheus or exporter"),
    # Label matchers naming one Tide exporter among several in the same Prometheus.
    (
        "prometheus-selector",
        with_spec(
            metrics={
                "prometheus": {
                    "url": "http://p:9090",
                    "selector": 'namespace="tide", job=~"tide-.*exporter", x!~"a\\"b"',
                }
            }
        ),
        None,
    ),
    # Not a matcher (the value unquoted): Prometheus would refuse every query.
    (
        "prometheus-selector-unquoted",
        with_spec(metrics={"prometheus": {"url": "http://p:9090", "selector": "namespace=tide"}}),
        "does not match",
    ),
    # Anything past the braces would change what the query means: refused, not spliced in.
    (
        "prometheus-selector-escape",
        with_spec(
            metrics={
                "prometheus": {
                    "url": "http://p:9090",
                    "selector": 'namespace="a"} or vector(1000) or up{job="x"',
                }
            }
        ),
        "does not match",
    ),
    # Step policies are required unless the direction is disabled.
    (
        "no-policies",
        with_spec(behavior={"scaleDown": {"stabilizationWindowSeconds": 60, "policies": []}}),
        "policies must list at least one",
    ),
    # Disabled scale-down needs no policies.
    ("disabled-down", with_spec(behavior={"scaleDown": {"selectPolicy": "Disabled"}}), None),
    # A negative window is refused by the schema.
    (
        "negative-window",
        with_spec(
            behavior={
                "scaleUp": {
                    "stabilizationWindowSeconds": -1,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
                }
            }
        ),
        "-1 is less than the minimum of 0",
    ),
    # A zero polling interval would spin.
    ("zero-polling", with_spec(pollingInterval=0), "less than or equal to the minimum of 0"),
    # No queues: nothing to consume.
    ("no-queues", with_spec(queues=[]), "should be non-empty"),
    # Duplicate queues are refused (list-type set in Kubernetes, the model in Python).
    ("duplicate-queues", with_spec(queues=["a", "a"]), "non-unique"),
    # A URL without a scheme.
    ("bad-url", with_spec(metrics={"exporter": {"url": "exporter:9808"}}), "does not match"),
    # An unknown step-policy type.
    (
        "bad-policy-type",
        with_spec(
            behavior={"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "periodSeconds": 15}]}}
        ),
        "is not one of",
    ),
    # A slow poll alone is valid: staleAfterSeconds, unset, follows pollingInterval.
    ("slow-polling-alone", with_spec(pollingInterval=60), None),
    # An explicit staleAfterSeconds still must cover one poll.
    (
        "stale-below-slow-polling",
        with_spec(pollingInterval=60, staleAfterSeconds=30),
        "staleAfterSeconds must be at least pollingInterval",
    ),
    # maxWaitSeconds 0 means no age target.
    ("no-age-target", with_spec(maxWaitSeconds=0), None),
    # A negative age target means nothing.
    ("negative-max-wait", with_spec(maxWaitSeconds=-1), "less than the minimum of 0"),
    # concurrency must be at least one slot.
    ("zero-concurrency", with_spec(concurrency=0), "less than the minimum of 1"),
    # KEDA's fallback behaviours are accepted ...
    (
        "fallback-if-higher",
        with_spec(
            fallback={
                "failureThreshold": 0,
                "replicas": 2,
                "behavior": "currentReplicasIfHigher",
            }
        ),
        None,
    ),
    # ... and nothing else.
    (
        "fallback-bad-behavior",
        with_spec(fallback={"failureThreshold": 3, "replicas": 2, "behavior": "latest"}),
        "is not one of",
    ),
    # A negative threshold has no meaning.
    (
        "fallback-negative-threshold",
        with_spec(fallback={"failureThreshold": -1, "replicas": 2}),
        "less than the minimum of 0",
    ),
    # The forecast may wake a pool from zero only when it is enabled (CEL).
    (
        "forecast-wake-disabled",
        with_spec(forecast={"enabled": False, "wakeFromZero": True}),
        "forecast.wakeFromZero needs forecast.enabled",
    ),
    # Enabled and waking is fine.
    ("forecast-wake", with_spec(forecast={"wakeFromZero": True, "leadSeconds": 60}), None),
]


@pytest.mark.parametrize(("name", "body", "error"), CASES, ids=[c[0] for c in CASES])
def test_crd_and_models_agree(
    admit: Callable[[dict[str, Any]], list[str]], name: str, body: dict[str, Any], error: str | None
) -> None:
    errors = admit(body)
    if error is None:
        assert errors == [], errors
        WorkerPoolSpec.model_validate(body["spec"])
    else:
        assert any(error in e for e in errors), errors
        with pytest.raises(ValidationError):
            WorkerPoolSpec.model_validate(body["spec"])


def named(name: str, **changes: Any) -> dict[str, Any]:
    body = with_spec(**changes)
    body["metadata"]["name"] = name
    return body


NAMES: list[tuple[str, dict[str, Any], bool]] = [
    # 63 characters: the longest label value, so the longest owned pool.
    ("owned-63", named("p" * 63), True),
    # 64: its Deployment and pods could never carry the tide.dev/workerpool label.
    ("owned-64", named("p" * 64), False),
    # 253 (the most a custom resource's name may have): refused as well.
    ("owned-253", named("p" * 253), False),
    # An adopted Deployment gets no label from the pool: any valid name will do.
    ("adopted-253", named("p" * 253, template=None, scaleTargetRef={"name": "d"}), True),
]


@pytest.mark.parametrize(("name", "body", "valid"), NAMES, ids=[n[0] for n in NAMES])
def test_names_that_cannot_label_a_deployment_are_refused(
    admit: Callable[[dict[str, Any]], list[str]], name: str, body: dict[str, Any], valid: bool
) -> None:
    errors = admit(body)
    if valid:
        assert errors == []
        WorkerPool.from_body(body)
    else:
        assert errors == [NAME_MESSAGE]
        with pytest.raises(ValidationError, match="at most 63 characters"):
            WorkerPool.from_body(body)


def test_defaults_that_follow_other_fields() -> None:
    # staleAfterSeconds: three polls, never under 30 s, unless set.
    assert WorkerPoolSpec.model_validate(with_spec()["spec"]).stale_after == 30
    slow = WorkerPoolSpec.model_validate(with_spec(pollingInterval=60)["spec"])
    assert slow.stale_after == 180
    assert slow.to_policy_config().stale_after_seconds == 180
    set_ = WorkerPoolSpec.model_validate(
        with_spec(pollingInterval=60, staleAfterSeconds=90)["spec"]
    )
    assert set_.stale_after == 90
    # maxWaitSeconds: 0 turns the age target off; null is the default, as the API server
    # fills a null with the schema's default.
    assert (
        WorkerPoolSpec.model_validate(with_spec(maxWaitSeconds=0)["spec"])
        .to_policy_config()
        .max_wait_seconds
        is None
    )
    spec = {**with_spec()["spec"], "maxWaitSeconds": None}
    assert WorkerPoolSpec.model_validate(spec).to_policy_config().max_wait_seconds == 60


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(admit: Callable[[dict[str, Any]], list[str]], path: Any) -> None:
    body = yaml.safe_load(path.read_text())
    assert admit(body) == []
    pool = WorkerPool.from_body(body)
    assert pool.spec.to_policy_config().max_replicas == pool.spec.max_replicas


def test_examples_cover_the_documented_cases() -> None:
    specs = {name: body["spec"] for name, body in load_examples()}
    assert any("template" in s for s in specs.values())
    assert any("scaleTargetRef" in s for s in specs.values())
    assert any(s.get("minReplicas") == 0 for s in specs.values())
    assert any("prometheus" in s["metrics"] for s in specs.values())


def test_committed_yaml_is_generated() -> None:
    assert CRD_PATH.read_text() == render_crd_yaml(), "run: python -m tide_operator.resources.crd"
    assert yaml.safe_load(CRD_PATH.read_text()) == build_crd()


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{key}", sub
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_schema_is_structural_and_described(crd_schema: dict[str, Any]) -> None:
    for section in ("spec", "status"):
        for path, node in _walk(crd_schema["properties"][section], section):
            assert node.get("description"), f"{path} has no description"
            assert "type" in node, f"{path} has no type"
            for forbidden in ("$ref", "anyOf", "title", "nullable"):
                assert forbidden not in node, f"{path} has {forbidden}"
            assert not ("properties" in node and "additionalProperties" in node), path


def test_crd_shape() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "workerpools.tide.dev"
    assert crd["spec"]["names"]["shortNames"] == ["wp"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    # Current and Ready-Workers are what exists; Workers is WorkersAvailable's reason.
    assert columns == [
        "Queues",
        "Desired",
        "Current",
        "Ready-Workers",
        "Workers",
        "Waiting",
        "Oldest",
        "Ready",
        # The operator replica that acts (status.actingReplica: the Lease's holder).
        "Operator",
        "Age",
    ]
