"""RBAC as the API server applies it, loaded from the chart's rendered Roles and ClusterRoles.

The emulator asks an ``Authorizer`` about every request it serves to the operator's service
account: allowed when a rule of a Role bound to it in the request's namespace, or of a
ClusterRole bound cluster-wide, matches the (API group, resource[/subresource], verb, name);
refused otherwise with the server's 403 (the message names the user, the verb, the resource
and the namespace or "the cluster scope", as kube-apiserver's RBAC authorizer says it).
Discovery (``/api``, ``/apis``, ``/version``, group and version documents) is granted to
every authenticated user by the built-in ``system:discovery`` role, and is here too.

The rules come from ``helm template`` of the chart itself, so a test that runs the operator
under them runs it exactly as the chart installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "tide"
RELEASE = "tide"


def render_chart(namespace: str, *values: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart (release ``tide``) into ``namespace``, parsed."""
    helm = Path(sys.executable).parent / "helm"
    binary = str(helm) if helm.exists() else shutil.which("helm")
    if binary is None:
        raise RuntimeError("helm is not installed: run scripts/install-tools.sh")
    args = [binary, "template", RELEASE, str(CHART), "--namespace", namespace]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=REPO)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Rule:
        return cls(
            api_groups=frozenset(raw.get("apiGroups") or ()),
            resources=frozenset(raw.get("resources") or ()),
            verbs=frozenset(raw.get("verbs") or ()),
            names=frozenset(raw.get("resourceNames") or ()),
        )

    def allows(self, *, group: str, resource: str, verb: str, name: str | None) -> bool:
        return (
            bool({group, "*"} & self.api_groups)
            and bool({resource, "*"} & self.resources)
            and bool({verb, "*"} & self.verbs)
            and (not self.names or name in self.names)
        )

    def pairs(self) -> set[tuple[str, str, str]]:
        """(group, resource, verb) triples this rule grants."""
        return {(g, r, v) for g in self.api_groups for r in self.resources for v in self.verbs}


@dataclass(frozen=True)
class Grants:
    """What one subject holds: rules per namespace (Roles) and cluster-wide (ClusterRoles)."""

    user: str
    namespaced: Mapping[str, tuple[Rule, ...]]
    cluster: tuple[Rule, ...]

    @classmethod
    def for_service_account(
        cls, objects: Iterable[Mapping[str, Any]], *, namespace: str, name: str
    ) -> Grants:
        objects = list(objects)
        roles = {
            (o["metadata"].get("namespace"), o["metadata"]["name"]): o
            for o in objects
            if o["kind"] == "Role"
        }
        cluster_roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}

        def bound(binding: Mapping[str, Any]) -> bool:
            return any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == name
                and s.get("namespace") == namespace
                for s in binding.get("subjects") or []
            )

        namespaced: dict[str, list[Rule]] = {}
        cluster: list[Rule] = []
        for binding in objects:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not bound(binding):
                continue
            ref = binding["roleRef"]
            where = binding["metadata"].get("namespace")
            role = (
                roles.get((where, ref["name"]))
                if ref["kind"] == "Role"
                else cluster_roles.get(ref["name"])
            )
            if role is None:
                raise ValueError(f"{binding['kind']} {binding['metadata']['name']}: no {ref}")
            rules = [Rule.parse(r) for r in role.get("rules") or []]
            if binding["kind"] == "ClusterRoleBinding":
                cluster += rules
            else:
                namespaced.setdefault(where, []).extend(rules)
        return cls(
            user=f"system:serviceaccount:{namespace}:{name}",
            namespaced={k: tuple(v) for k, v in namespaced.items()},
            cluster=tuple(cluster),
        )

    def allows(
        self, *, group: str, resource: str, verb: str, namespace: str | None, name: str | None
    ) -> bool:
        rules: Sequence[Rule] = self.cluster
        if namespace is not None:
            rules = (*rules, *self.namespaced.get(namespace, ()))
        return any(r.allows(group=group, resource=resource, verb=verb, name=name) for r in rules)

    def forbidden_message(
        self, *, group: str, resource: str, verb: str, namespace: str | None, name: str | None
    ) -> str:
        """kube-apiserver's words for a 403, e.g. for a list of deployments in ``tide``."""
        base = resource.partition("/")[0]
        qualified = f"{base}.{group}" if group else base
        what = f'{qualified} "{name}"' if name else qualified
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        return (
            f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" {where}'
        )
