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
