"""The WorkerPool CustomResourceDefinition, generated from the pydantic models in ``spec.py``.

One source of truth: the models declare names, types, bounds, enums, descriptions and the
CEL rules; this module turns their JSON Schema into a *structural* OpenAPI v3 schema as the
API server wants it (no ``$ref``, no ``anyOf`` with null, ``exclusiveMinimum`` as a boolean,
free-form maps as ``x-kubernetes-preserve-unknown-fields``, no ``additionalProperties``
beside ``properties``). The committed YAML in ``charts/tide/files/crds/`` is this module's
output; a test fails when the two differ, and ``python -m tide_operator.resources.crd`` rewrites it.

The policy's own models (``Behavior``, ``ScalingRules``, ``ScalingPolicy``, ``Fallback``)
carry no per-field descriptions and live in a module another part of the system owns, so
their field descriptions and the CEL rule mirroring ``ScalingRules``' validator are kept
here, in ``_POLICY_DESCRIPTIONS`` and ``_POLICY_RULES``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel

from tide_operator.resources.spec import (
    API_VERSION,
    GROUP,
    KIND,
    NAME_MESSAGE,
    NAME_RULE,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    WorkerPoolSpec,
    WorkerPoolStatus,
)

__all__ = ["CRD_PATH", "build_crd", "main", "render_crd_yaml", "structural_schema"]

CRD_PATH: Final = (
    Path(__file__).resolve().parents[3]
    / "charts"
    / "tide"
    / "files"
    / "crds"
    / f"{PLURAL}.{GROUP}.yaml"
)

_POLICY_DESCRIPTIONS: Final[dict[str, dict[str, str]]] = {
    "Behavior": {
        "scaleUp": "Rules for growing the pool (default: no window; +300% or +10 pods "
        "per 15 s, whichever is more).",
        "scaleDown": "Rules for shrinking the pool (default: 30 s window; up to 100% per "
        "15 s). Never below the in-flight work.",
    },
    "ScalingRules": {
        "stabilizationWindowSeconds": "Seconds of past recommendations considered: scale-up "
        "takes the lowest, scale-down the highest (0-3600).",
        "selectPolicy": "Max (the policy allowing the largest change), Min, or Disabled "
        "(no scaling in this direction at all, 0 to 1 and 1 to 0 included, as KEDA's "
        "paused-scale-out and paused-scale-in).",
        "policies": "Step limits: at most value pods or percent per periodSeconds.",
    },
    "ScalingPolicy": {
        "type": "Pods or Percent.",
        "value": "How many pods, or what percentage of the current size.",
        "periodSeconds": "The window the limit applies to, in seconds (1-1800).",
    },
    "Fallback": {
        "failureThreshold": "Fallback starts when more metric reads than this failed in a "
        "row (KEDA's count: 3 falls back on the fourth failure).",
        "replicas": "Replicas for the static behaviour, and the bound the currentReplicasIf* "
        "behaviours compare with (at least 1).",
        "behavior": "static: run replicas; currentReplicas: keep the current size; "
        "currentReplicasIfHigher: the current size if above replicas, else replicas; "
        "currentReplicasIfLower: the current size if below replicas, else replicas.",
    },
}

_POLICY_RULES: Final[dict[str, list[dict[str, str]]]] = {
    "Forecast": [
        {
            "rule": "!has(self.wakeFromZero) || !self.wakeFromZero || "
            "!has(self.enabled) || self.enabled",
            "message": "forecast.wakeFromZero needs forecast.enabled",
        }
    ],
    "ScalingRules": [
        {
            "rule": "(has(self.selectPolicy) && self.selectPolicy == 'Disabled') || "
            "(has(self.policies) && size(self.policies) > 0)",
            "message": "policies must list at least one {type, value, periodSeconds} "
            "unless selectPolicy is Disabled",
        }
    ],
}

_DROPPED_KEYS: Final = frozenset({"title", "$defs"})


def _clean_text(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


class _Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def convert(self, node: dict[str, Any], *, owner: str | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            resolved = self.convert(self.defs[name], owner=name)
            # Keys beside the reference (the field's description) win over the model's.
            resolved.update(self.convert(node, owner=owner) if node else {})
            return resolved
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express {branches} in a structural schema")
            merged = self.convert(branches[0], owner=owner)
            merged.update(self.convert(node, owner=owner))
            return merged

        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED_KEYS:
                continue
            if key == "description":
                out[key] = _clean_text(value)
            elif key == "default":
                # Only scalar defaults: the API server applies them, and objects are better
                # defaulted by the models (their defaults are documented in the docs).
                if isinstance(value, bool | int | float | str):
                    out[key] = value
            elif key == "properties":
                props: dict[str, Any] = {}
                for prop, schema in value.items():
                    converted = self.convert(schema)
                    extra = _POLICY_DESCRIPTIONS.get(owner or "", {}).get(prop)
                    if extra is not None:
                        converted["description"] = extra
                    props[prop] = converted
                out[key] = props
            elif key == "additionalProperties":
                if value is True or value == {}:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out[key] = self.convert(value)
                # ``False`` (extra="forbid") is implied: structural schemas prune unknowns.
            elif key == "items":
                out[key] = self.convert(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                # JSON Schema 2020 numbers become OpenAPI v3.0's boolean flags.
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            elif key == "const":
                out["enum"] = [value]
            else:
                out[key] = value
        if "x-kubernetes-preserve-unknown-fields" in out and "properties" not in out:
            out.setdefault("type", "object")
        if owner in _POLICY_RULES:
            out.setdefault("x-kubernetes-validations", []).extend(_POLICY_RULES[owner])
        return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON Schema as a structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _Converter(schema.get("$defs", {})).convert(schema, owner=model.__name__)


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Queues", "type": "string", "jsonPath": ".spec.queues"},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
        {"name": "Current", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Ready-Workers", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {
            # The controller's reason when workers are missing (FailedCreate, ...).
            "name": "Workers",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="WorkersAvailable")].reason',
        },
        {"name": "Waiting", "type": "integer", "jsonPath": ".status.lastObservation.waiting"},
        {
            "name": "Oldest",
            "type": "number",
            "description": "Age of the oldest waiting task, in seconds.",
            "jsonPath": ".status.lastObservation.oldestAgeSeconds",
        },
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {
            # The replica holding the operator's Lease (docs/operator.md, "High availability").
            "name": "Operator",
            "type": "string",
            "jsonPath": ".status.actingReplica",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition ``workerpools.tide.dev`` as a dict."""
    spec_schema = structural_schema(WorkerPoolSpec)
    status_schema = structural_schema(WorkerPoolStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "tide", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["tide"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A pool of Celery workers that Tide creates or "
                            "adopts, and scales from the work waiting in its queues.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {"rule": NAME_RULE, "message": NAME_MESSAGE}
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = (
        "# Generated by `python -m tide_operator.resources.crd` from "
        f"tide_operator/resources/spec.py ({API_VERSION}). Do not edit.\n"
    )
    body: str = yaml.safe_dump(build_crd(), sort_keys=False, width=100)
    return header + body


def main(argv: list[str] | None = None) -> None:
    """Write the CRD YAML to the chart (or to the path given)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else CRD_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_crd_yaml())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
