"""The chart grants the operator exactly what it uses: derived from the requests it made.

Every operator test runs the operator against the emulator as the chart installs it, and the
emulator logs each request the operator's service account made. This test runs last in the
folder (``conftest.py`` orders it) and compares the (API group, resource[/subresource],
verb) triples the operator asked for with the ones the chart's Role (namespace scope) and
ClusterRole (cluster scope) grant. A grant the operator lacks fails whatever ran; a grant it
never used fails only when the whole folder ran, since a subset of the tests may simply not
have reached that call. Cluster scope runs the same code in every namespace, so what the
ClusterRole must hold is what the operator used in either scope (most tests run it in
namespace scope, the chart's default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kube_rbac import Rule
from pool_harness import USAGE, Pair, Scope, chart_objects

HERE = Path(__file__).resolve().parent


def granted(scope: Scope) -> set[Pair]:
    """What the chart's operator roles grant, rule by rule, as triples: its Role (or
    ClusterRole) for the pools, and the Role for its Lease in its own namespace."""
    kinds = {"ClusterRole", "Role"} if scope == "cluster" else {"Role"}
    roles: list[dict[str, Any]] = [
        o
        for o in chart_objects(scope)
        if o["kind"] in kinds
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    assert len(roles) == 2, [r["metadata"]["name"] for r in roles]
    triples: set[Pair] = set()
    for role in roles:
        for raw in role["rules"]:
            triples |= Rule.parse(raw).pairs()
    return triples


@pytest.mark.parametrize("scope", ["namespace", "cluster"])
def test_chart_grants_exactly_what_the_operator_uses(scope: Scope) -> None:
    used = set(USAGE.pairs[scope])
    if scope == "cluster":
        used |= USAGE.pairs["namespace"]
    grants = granted(scope)
    lacking = used - grants
    assert not lacking, f"the chart's {scope} RBAC lacks what the operator uses: {sorted(lacking)}"
    if USAGE.whole_folder(HERE):
        assert USAGE.pairs[scope], f"no operator ran in {scope} scope"
        unused = grants - used
        assert not unused, f"the chart's {scope} RBAC grants what no test used: {sorted(unused)}"
    print(f"\noperator {scope} scope uses: {sorted(used)}")
