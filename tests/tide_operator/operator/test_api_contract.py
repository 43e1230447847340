"""The emulator refuses what a real kube-apiserver refuses, and the operator asks nothing else.

Each row of the table is one request and the real server's answer to it (from its OpenAPI
document; the messages are the server's own words). The operator suite as a whole is held
to the same contract by the emulator fixture, which fails any test whose requests breached
it; these tests show the contract can fail, and that the carried copy of the document's
paths is the document's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from kube_contract import EXTRACT, Contract, address, extract, shared_document
from kube_emulator import TideEmulator, contract

from tide_operator.edge.handlers import make_settings

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
POOLS = "/apis/tide.dev/v1alpha1/namespaces/default/workerpools"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
WATCH = {"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": "1"}

CASES: list[tuple[str, str, str, dict[str, str], str | None, Any, int | None, str]] = [
    # kopf sends str(server_timeout): a float setting makes "300.0", which kills every watch.
    (
        "float-watch-timeout",
        "GET",
        POOLS,
        {**WATCH, "timeoutSeconds": "300.0"},
        None,
        None,
        400,
        'strconv.ParseInt: parsing "300.0": invalid syntax',
    ),
    # The shipped integer timeout is what a real server accepts.
    (
        "integer-watch-timeout",
        "GET",
        POOLS,
        {**WATCH, "timeoutSeconds": "300"},
        None,
        None,
        None,
        "",
    ),
    # Every integer parameter is parsed the same way.
    ("bad-limit", "GET", DEPLOYMENTS, {"limit": "ten"}, None, None, 400, 'parsing "ten"'),
    # A path the API does not have.
    (
        "unknown-path",
        "GET",
        "/apis/apps/v1/namespaces/default/deploymentz",
        {},
        None,
        None,
        404,
        "could not find",
    ),
    # A custom resource has only the subresources its CRD declares (status, no scale).
    ("no-pool-scale", "GET", f"{POOLS}/p/scale", {}, None, None, 404, "could not find"),
    # POST creates in a collection; a named object cannot be POSTed to.
    ("post-to-object", "POST", f"{DEPLOYMENTS}/d", {}, None, {}, 405, "does not allow this method"),
    # Custom resources do not take strategic merge patches.
    ("strategic-on-pool", "PATCH", f"{POOLS}/p/status", {}, STRATEGIC, {}, 415, "unknown format"),
    # Built-in resources do.
    ("strategic-on-deployment", "PATCH", f"{DEPLOYMENTS}/d", {}, STRATEGIC, {}, None, ""),
    # A merge patch of the scale subresource, with the field manager, as the operator sends it.
    (
        "scale",
        "PATCH",
        f"{DEPLOYMENTS}/d/scale",
        {"fieldManager": "tide-operator"},
        MERGE,
        {},
        None,
        "",
    ),
    # The body must be of the kind the path holds.
    (
        "pod-as-deployment",
        "POST",
        DEPLOYMENTS,
        {},
        "application/json",
        {"apiVersion": "v1", "kind": "Pod"},
        400,
        "does not match the expected API version (apps/v1)",
    ),
    (
        "wrong-kind",
        "POST",
        POOLS,
        {},
        "application/json",
        {"apiVersion": "tide.dev/v1alpha1", "kind": "Deployment"},
        400,
        "cannot be handled as a WorkerPool",
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "query", "content_type", "body", "status", "message"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_requests_are_judged_as_a_real_server_does(
    name: str,
    method: str,
    path: str,
    query: dict[str, str],
    content_type: str | None,
    body: Any,
    status: int | None,
    message: str,
) -> None:
    verdict = contract().check(
        method=method, path=path, query=query, content_type=content_type, body=body
    )
    if status is None:
        assert verdict.refusal is None, verdict
        assert verdict.violations == []
    else:
        assert verdict.refusal is not None, name
        assert verdict.refusal.status == status
        assert message in verdict.refusal.message
        assert verdict.violations, "a refused request must fail the test that sent it"


def test_served_breaches_still_fail_the_test() -> None:
    # A real server ignores a parameter it does not know and reads "yes" as true; both are
    # served, and both are client bugs the tests must not let through.
    verdict = contract().check(
        method="GET",
        path=POOLS,
        query={"watch": "yes", "sendInitialEvents": "true"},
        content_type=None,
        body=None,
    )
    assert verdict.refusal is None
    assert len(verdict.violations) == 2


def test_the_shipped_watch_timeout_is_an_integer_a_server_accepts() -> None:
    settings = make_settings()
    sent = str(settings.watching.server_timeout)  # exactly what kopf puts in the URL
    assert sent.isdigit(), sent
    verdict = contract().check(
        method="GET",
        path=POOLS,
        query={**WATCH, "timeoutSeconds": sent},
        content_type=None,
        body=None,
    )
    assert verdict.violations == []
    # The client waits longer than the server, so the server closes a healthy watch.
    assert settings.watching.client_timeout is not None
    assert settings.watching.client_timeout > int(sent)


@pytest.mark.asyncio
async def test_the_emulator_answers_a_bad_watch_with_the_servers_400(
    emulator: TideEmulator,
) -> None:
    async with httpx.AsyncClient(base_url=str(emulator.url)) as client:
        response = await client.get(POOLS, params={**WATCH, "timeoutSeconds": "300.0"})
    assert response.status_code == 400
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'strconv.ParseInt: parsing "300.0": invalid syntax',
        "reason": "BadRequest",
        "details": {},
        "code": 400,
    }
    assert emulator.log[-1].refused == 400
    assert len(emulator.violations) == 1
    emulator.violations.clear()  # seen; the fixture fails any test that leaves one


SCALES: list[tuple[Any, int, str]] = [
    # What the operator sends: an integer, at least 0.
    (3, 200, ""),
    (0, 200, ""),
    # A float, even a whole one, does not decode into the Scale's int32: Python's json
    # writes 2.0 for a float that slipped through, and a real server answers 422.
    (2.0, 422, "cannot unmarshal number 2.0 into Go struct field ScaleSpec.spec.replicas"),
    # Neither does a string, a bool, or an integer past int32.
    ("3", 422, "cannot unmarshal string into Go struct field"),
    (True, 422, "cannot unmarshal bool into Go struct field"),
    (2**31, 422, "cannot unmarshal number 2147483648 into Go struct field"),
    # Decoded, but below 0: the Scale's validation.
    (-1, 422, 'Scale.autoscaling "d" is invalid: spec.replicas: Invalid value: -1'),
]


@pytest.mark.asyncio
async def test_the_emulator_refuses_the_scales_a_server_refuses(emulator: TideEmulator) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}},
    }
    async with httpx.AsyncClient(base_url=str(emulator.url)) as client:
        assert (await client.post(DEPLOYMENTS, json=body)).status_code < 300
        for replicas, status, message in SCALES:
            for content_type, patch in (
                (MERGE, {"spec": {"replicas": replicas}}),
                (
                    "application/json-patch+json",
                    [{"op": "replace", "path": "/spec/replicas", "value": replicas}],
                ),
            ):
                response = await client.patch(
                    f"{DEPLOYMENTS}/d/scale",
                    content=json.dumps(patch),
                    headers={"Content-Type": content_type},
                )
                assert response.status_code == status, (replicas, content_type, response.text)
                if status != 200:
                    assert response.json()["reason"] == "Invalid"
                    assert message in response.json()["message"]
        scale = await client.get(f"{DEPLOYMENTS}/d")
    assert scale.json()["spec"]["replicas"] == 0  # the last accepted
    refused = [row for row in SCALES if row[1] != 200]
    assert len(emulator.violations) == 2 * len(refused)
    emulator.violations.clear()  # seen; the fixture fails any test that leaves one


def test_requests_are_addressed_as_rbac_sees_them() -> None:
    # The verb is the RBAC verb, and subresources are part of the resource.
    assert address("GET", POOLS, {"watch": "true"}) == address("GET", POOLS, {"watch": "1"})
    watch = address("GET", POOLS, {"watch": "true"})
    assert watch is not None
    assert (watch.group, watch.resource, watch.verb) == ("tide.dev", "workerpools", "watch")
    scale = address("PATCH", f"{DEPLOYMENTS}/d/scale", {})
    assert scale is not None
    assert (scale.resource, scale.verb, scale.namespace, scale.name) == (
        "deployments/scale",
        "patch",
        "default",
        "d",
    )
    namespace = address("GET", "/api/v1/namespaces/default", {})
    assert namespace is not None
    assert (namespace.resource, namespace.namespace, namespace.name) == (
        "namespaces",
        None,
        "default",
    )
    assert address("GET", "/apis/tide.dev/v1alpha1", {}) is None  # discovery


# Paths the operator's requests and the tests' own must find in the carried copy.
REQUIRED = [
    "/api/v1/namespaces/{namespace}/events",
    "/api/v1/namespaces/{namespace}/pods",
    "/api/v1/namespaces/{namespace}/pods/{name}",
    "/apis/apps/v1/namespaces/{namespace}/deployments",
    "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
    "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/api/v1/namespaces",
    "/apis",
    "/api/v1",
]


def test_the_carried_paths_are_the_documents() -> None:
    carried = json.loads(EXTRACT.read_text())
    for path in REQUIRED:
        assert path in carried["paths"], path
    document = shared_document()
    if document is not None:
        # Beside the team's copy of the real server's document: the carried extract must be
        # exactly what the script derives from it (run kube_contract.py to regenerate).
        assert carried == extract(json.loads(document.read_text()))
    pools = Contract(carried["paths"]).with_custom_resource(
        group="tide.dev", version="v1alpha1", plural="workerpools", kind="WorkerPool"
    )
    status = pools.paths["/apis/tide.dev/v1alpha1/namespaces/{namespace}/workerpools/{name}/status"]
    assert STRATEGIC not in status["patch"]["consumes"]
    listing = pools.paths["/apis/tide.dev/v1alpha1/workerpools"]["get"]["query"]
    assert listing["timeoutSeconds"] == "integer"
    assert listing["watch"] == "boolean"


# WorkerPools as kube-apiserver v1.26.4 with Tide's CRD serves them: each row below is a
# request sent to a real server (this machine's, with the CRD of build_crd) and its answer.
JSON_PATCH = "application/json-patch+json"
NOT_CHECKED = (
    "<nil>",
    "FieldValueInvalid",
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation",
)


def example_pool(name: str = "p", **spec: Any) -> dict[str, Any]:
    """manifests/examples/workerpool-adopted.yaml, as the real server was sent it."""
    body: dict[str, Any] = {
        "apiVersion": "tide.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "queues": ["reports"],
            "concurrency": 2,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            "minReplicas": 1,
            "maxReplicas": 8,
            "targetBacklogPerWorker": 4,
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 120,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
            "fallback": {"failureThreshold": 3, "replicas": 2},
            "metrics": {"exporter": {"url": "http://tide-exporter.tide.svc:9808/metrics"}},
        },
    }
    body["spec"].update(spec)
    return body


# (what, method, path under POOLS, content type, body, name, causes: (field, reason, message)).
POOL_REFUSALS: list[tuple[str, str, str, str, Any, str, list[tuple[str, str, str]]]] = [
    # The CEL rule on spec: the pool test_invalid_and_broken_pools_... used to create.
    (
        "create-min-above-max",
        "POST",
        "",
        "application/json",
        example_pool("a", minReplicas=5, maxReplicas=2),
        "a",
        [
            (
                "spec",
                "FieldValueInvalid",
                'Invalid value: "object": minReplicas must not exceed maxReplicas',
            )
        ],
    ),
    # Two schema bounds at once; a bound does not stop the CEL rules (both passed here).
    (
        "create-two-minimums",
        "POST",
        "",
        "application/json",
        example_pool("b", minReplicas=-1, concurrency=0),
        "b",
        [
            (
                "spec.minReplicas",
                "FieldValueInvalid",
                "Invalid value: -1: spec.minReplicas in body should be greater than or equal to 0",
            ),
            (
                "spec.concurrency",
                "FieldValueInvalid",
                "Invalid value: 0: spec.concurrency in body should be greater than or equal to 1",
            ),
        ],
    ),
    # A wrong type blocks the CEL rules, and the server says so.
    (
        "create-string-replicas",
        "POST",
        "",
        "application/json",
        example_pool("c", minReplicas="x"),
        "c",
        [
            (
                "spec.minReplicas",
                "FieldValueTypeInvalid",
                'Invalid value: "string": spec.minReplicas in body must be of type integer: '
                '"string"',
            ),
            NOT_CHECKED,
        ],
    ),
    # So does a missing required field.
    (
        "create-no-spec",
        "POST",
        "",
        "application/json",
        {k: v for k, v in example_pool("d").items() if k != "spec"},
        "d",
        [("spec", "FieldValueRequired", "Required value"), NOT_CHECKED],
    ),
    # The root rule: a template pool's name is a label value, at most 63 characters.
    (
        "create-long-owned-name",
        "POST",
        "",
        "application/json",
        example_pool("q" * 70, scaleTargetRef=None, template={"image": "x"}),
        "q" * 70,
        [
            (
                "<nil>",
                "FieldValueInvalid",
                'Invalid value: "object": metadata.name must be at most 63 characters for a pool '
                "with a template: it is the value of the tide.dev/workerpool label on the pool's "
                "Deployment and pods",
            )
        ],
    ),
    # An enum is blocking too.
    (
        "create-bad-fallback-behavior",
        "POST",
        "",
        "application/json",
        example_pool("e", fallback={"behavior": "zz", "failureThreshold": 3, "replicas": 2}),
        "e",
        [
            (
                "spec.fallback.behavior",
                "FieldValueNotSupported",
                'Unsupported value: "zz": supported values: "static", "currentReplicas", '
                '"currentReplicasIfHigher", "currentReplicasIfLower"',
            ),
            NOT_CHECKED,
        ],
    ),
    # queues is a set: the second copy is the duplicate.
    (
        "create-duplicate-queue",
        "POST",
        "",
        "application/json",
        example_pool("f", queues=["a", "a"]),
        "f",
        [("spec.queues[1]", "FieldValueDuplicate", 'Duplicate value: "a"')],
    ),
    # A merge patch is judged on the object it makes.
    (
        "patch-min-above-max",
        "PATCH",
        "/p",
        MERGE,
        {"spec": {"minReplicas": 50}},
        "p",
        [
            (
                "spec",
                "FieldValueInvalid",
                'Invalid value: "object": minReplicas must not exceed maxReplicas',
            )
        ],
    ),
    # So is a JSON patch: one bound and the two rules it breaks.
    (
        "json-patch-max-zero",
        "PATCH",
        "/p",
        JSON_PATCH,
        [{"op": "replace", "path": "/spec/maxReplicas", "value": 0}],
        "p",
        [
            (
                "spec.maxReplicas",
                "FieldValueInvalid",
                "Invalid value: 0: spec.maxReplicas in body should be greater than or equal to 1",
            ),
            (
                "spec",
                "FieldValueInvalid",
                'Invalid value: "object": minReplicas must not exceed maxReplicas',
            ),
            (
                "spec",
                "FieldValueInvalid",
                'Invalid value: "object": fallback.replicas must not exceed maxReplicas',
            ),
        ],
    ),
    # The status has a schema too: a wrong type...
    (
        "status-string-replicas",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"replicas": "x"}},
        "p",
        [
            (
                "status.replicas",
                "FieldValueTypeInvalid",
                'Invalid value: "string": status.replicas in body must be of type integer: '
                '"string"',
            ),
            NOT_CHECKED,
        ],
    ),
    # ...a condition without its required fields...
    (
        "status-bare-condition",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"conditions": [{"type": "Ready"}]}},
        "p",
        [
            ("status.conditions[0].status", "FieldValueRequired", "Required value"),
            ("status.conditions[0].reason", "FieldValueRequired", "Required value"),
            ("status.conditions[0].lastTransitionTime", "FieldValueRequired", "Required value"),
            NOT_CHECKED,
        ],
    ),
    # ...and bounds.
    (
        "status-negative-waiting",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"lastObservation": {"waiting": -1, "inflight": 0, "scheduled": 0, "at": "x"}}},
        "p",
        [
            (
                "status.lastObservation.waiting",
                "FieldValueInvalid",
                "Invalid value: -1: status.lastObservation.waiting in body should be greater than "
                "or equal to 0",
            )
        ],
    ),
    # Every object's name is a DNS subdomain.
    (
        "create-bad-name",
        "POST",
        "",
        "application/json",
        example_pool("P_bad"),
        "P_bad",
        [
            (
                "metadata.name",
                "FieldValueInvalid",
                'Invalid value: "P_bad": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        ],
    ),
]


def _send(client: httpx.AsyncClient, method: str, path: str, content_type: str, body: Any) -> Any:
    return client.request(
        method, path, content=json.dumps(body), headers={"Content-Type": content_type}
    )


@pytest.mark.asyncio
async def test_the_emulator_refuses_the_pools_a_server_with_the_crd_refuses(
    emulator: TideEmulator,
) -> None:
    async with httpx.AsyncClient(base_url=str(emulator.url)) as client:
        assert (await client.post(POOLS, json=example_pool())).status_code < 300
        before = (await client.get(f"{POOLS}/p")).json()
        for what, method, suffix, content_type, body, name, causes in POOL_REFUSALS:
            response = await _send(client, method, POOLS + suffix, content_type, body)
            assert response.status_code == 422, (what, response.text)
            status = response.json()
            assert status["reason"] == "Invalid", what
            assert status["details"]["name"] == name
            assert (status["details"]["group"], status["details"]["kind"]) == (
                "tide.dev",
                "WorkerPool",
            )
            got = [(c["field"], c["reason"], c["message"]) for c in status["details"]["causes"]]
            assert sorted(got) == sorted(causes), what
            listed = [f"{field}: {message}" for field, _, message in got]
            shown = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
            assert status["message"] == f'WorkerPool.tide.dev "{name}" is invalid: {shown}'
        after = (await client.get(f"{POOLS}/p")).json()
    assert after == before  # nothing refused was stored
    assert len(emulator.violations) == len(POOL_REFUSALS)
    emulator.violations.clear()  # seen; the fixture fails any test that leaves one


def at(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "R",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}

# Accepted writes, in order on one pool, and what the real server stored: (what, method,
# path under POOLS, content type, body, {dotted field: value after}, new version?,
# generation after).
POOL_WRITES: list[tuple[str, str, str, str, Any, dict[str, Any], bool, int]] = [
    # Created: fields the schema does not know are pruned (spec and top level), the
    # schema's defaults filled in, a status sent with it dropped.
    (
        "create",
        "POST",
        "",
        "application/json",
        {
            **example_pool(bogus=1, fallback={"failureThreshold": 3, "replicas": 2, "zz": 2}),
            "extra": 1,
            "status": {"replicas": 3},
        },
        {
            "spec.bogus": None,
            "spec.fallback": {"behavior": "static", "failureThreshold": 3, "replicas": 2},
            "extra": None,
            "status": None,
            "spec.activationThreshold": 0,
            "spec.cooldownPeriod": 60,
            "spec.maxWaitSeconds": 60,
            "spec.paused": False,
            "spec.pollingInterval": 5,
            "spec.metrics.exporter.timeoutSeconds": 5,
        },
        True,
        1,
    ),
    # A status sent to the main resource is ignored: nothing changes, not even the version.
    (
        "status-via-main",
        "PATCH",
        "/p",
        MERGE,
        {"status": {"replicas": 7}},
        {"status": None},
        False,
        1,
    ),
    # A spec sent to /status is ignored; its status is taken.
    (
        "spec-via-status",
        "PATCH",
        "/p/status",
        MERGE,
        {"spec": {"minReplicas": 6}, "status": {"replicas": 2}},
        {"spec.minReplicas": 1, "status.replicas": 2},
        True,
        1,
    ),
    # Unknown status fields are pruned, at any depth.
    (
        "unknown-status-fields",
        "PATCH",
        "/p/status",
        MERGE,
        {
            "status": {
                "bogus": 1,
                "lastObservation": {
                    "waiting": 1,
                    "inflight": 0,
                    "scheduled": 0,
                    "at": "x",
                    "zz": 1,
                },
            }
        },
        {
            "status.bogus": None,
            "status.lastObservation": {"waiting": 1, "inflight": 0, "scheduled": 0, "at": "x"},
        },
        True,
        1,
    ),
    # A condition's message defaults to "".
    (
        "condition-default",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"conditions": [CONDITION]}},
        {"status.conditions": [{**CONDITION, "message": ""}]},
        True,
        1,
    ),
    # A whole float is an integer (stored as 2).
    (
        "whole-float",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"replicas": 2.0}},
        {"status.replicas": 2},
        False,
        1,
    ),
    # A spec change bumps the generation...
    (
        "spec-change",
        "PATCH",
        "/p",
        MERGE,
        {"spec": {"minReplicas": 2}},
        {"spec.minReplicas": 2},
        True,
        2,
    ),
    # ...the same value again changes nothing...
    (
        "spec-same",
        "PATCH",
        "/p",
        MERGE,
        {"spec": {"minReplicas": 2}},
        {"spec.minReplicas": 2},
        False,
        2,
    ),
    # ...and metadata alone is no new generation.
    (
        "labels",
        "PATCH",
        "/p",
        MERGE,
        {"metadata": {"labels": {"a": "b"}}},
        {"metadata.labels": {"a": "b"}},
        True,
        2,
    ),
    # A null in a status merge patch removes the field.
    (
        "status-null",
        "PATCH",
        "/p/status",
        MERGE,
        {"status": {"replicas": None}},
        {"status.replicas": None},
        True,
        2,
    ),
    # Removing the status through the main resource is ignored as well.
    (
        "status-removal-via-main",
        "PATCH",
        "/p",
        MERGE,
        {"status": None},
        {"status.conditions": [{**CONDITION, "message": ""}]},
        False,
        2,
    ),
    # A null spec field is dropped, then defaulted (minReplicas: 0).
    (
        "spec-null",
        "PATCH",
        "/p",
        MERGE,
        {"spec": {"minReplicas": None}},
        {"spec.minReplicas": 0},
        True,
        3,
    ),
]


@pytest.mark.asyncio
async def test_the_emulator_stores_pools_as_a_server_with_the_crd_does(
    emulator: TideEmulator,
) -> None:
    async with httpx.AsyncClient(base_url=str(emulator.url)) as client:
        version = ""
        for (
            what,
            method,
            suffix,
            content_type,
            body,
            fields,
            new_version,
            generation,
        ) in POOL_WRITES:
            response = await _send(client, method, POOLS + suffix, content_type, body)
            assert response.status_code < 300, (what, response.text)
            stored = (await client.get(f"{POOLS}/p")).json()
            assert response.json() == stored, what  # the answer is the object stored
            for field, value in fields.items():
                assert at(stored, field) == value, (what, field, at(stored, field))
            assert (stored["metadata"]["resourceVersion"] != version) == new_version, what
            assert stored["metadata"]["generation"] == generation, what
            version = stored["metadata"]["resourceVersion"]
    assert emulator.violations == []
