"""CRD admission as the API server does it: the structural schema, then the CEL rules.

``admit(obj)`` returns the list of errors the API server would give for a WorkerPool:
JSON-schema errors from ``openAPIV3Schema`` (OpenAPI v3.0 is JSON Schema draft 4 plus
extensions, which the validator ignores) and the messages of ``x-kubernetes-validations``
rules that evaluate to false, each rule run by cel-python on the node it is attached to.
As in Kubernetes, schema ``number`` fields reach CEL as doubles whatever the YAML says.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from tide_operator.resources.crd import build_crd

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def _as_cel_numbers(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            k: _as_cel_numbers(props.get(k) or (extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_as_cel_numbers(schema.get("items") or {}, v) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _cel_errors(schema: dict[str, Any], value: Any, env: celpy.Environment) -> list[str]:
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(_as_cel_numbers(schema, value))})
        if not bool(result):
            errors.append(rule["message"])
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], env)
    # The API server enforces set semantics itself (JSON Schema would say uniqueItems).
    is_set = isinstance(value, list) and schema.get("x-kubernetes-list-type") == "set"
    if is_set and len({repr(v) for v in value}) != len(value):
        errors.append(f"{value} has non-unique elements")
    if isinstance(value, list) and "items" in schema:
        for item in value:
            errors += _cel_errors(schema["items"], item, env)
    return errors


@pytest.fixture(scope="session")
def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="session")
def admit(crd_schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    validator = jsonschema.Draft4Validator(crd_schema)
    env = celpy.Environment()

    def check(obj: dict[str, Any]) -> list[str]:
        errors = [e.message for e in validator.iter_errors(obj)]
        if errors:
            # The API server stops at schema errors before running CEL on a broken object.
            return errors
        return _cel_errors(crd_schema, obj, env)

    return check


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, yaml.safe_load(p.read_text())) for p in EXAMPLES]
