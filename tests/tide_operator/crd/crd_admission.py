"""CRD admission as the API server does it: the structural schema, then the CEL rules.

``admit(obj)`` returns the list of errors the API server would give for a WorkerPool:
JSON-schema errors from ``openAPIV3Schema`` (OpenAPI v3.0 is JSON Schema draft 4 plus
extensions, which the validator ignores) and the messages of ``x-kubernetes-validations``
rules that evaluate to false, each rule run by cel-python on the node it is attached to.
As in Kubernetes, schema ``number`` fields reach CEL as doubles whatever the YAML says.

``field_errors(obj)`` gives the same errors as kube-apiserver v1.26 words them (field
path, cause reason, message; each format checked against a real server), and
``decode(obj)`` does what the server does to a WorkerPool body before validating it:
drops nulls and the fields the structural schema does not know (pruning; nothing in
``x-kubernetes-preserve-unknown-fields``), then fills the schema's defaults. The Kubernetes
emulator of the operator tests admits WorkerPools through these.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422 as kube-apiserver v1.26 reports it (``details.causes[]``)."""

    field: str  # "spec.queues[0]"; "<nil>" for the object itself
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueTypeInvalid, ...
    message: str  # the cause's message, without the field
    detail: str | None = None  # the rule's message or jsonschema's, as ``admit`` gives it

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# Schema failures after which the server runs no CEL rule (``hasBlockingErr`` in v1.26's
# customresource strategy): a wrong type, a missing field, an enum, maxLength, maxItems.
BLOCKING = {
    "FieldValueTypeInvalid",
    "FieldValueRequired",
    "FieldValueNotSupported",
    "FieldValueTooLong",
    "FieldValueTooMany",
}
NOT_CHECKED = FieldError(
    "<nil>",
    "FieldValueInvalid",
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation",
)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<nil>"


def _go(value: Any) -> str:
    """A value as the server prints it in ``Invalid value: ...``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def _schema_error(error: jsonschema.ValidationError) -> list[FieldError]:
    """jsonschema's error in the server's words (kube-openapi's validate errors)."""
    field = _path(error.absolute_path)
    value, bound, kind = error.instance, error.validator_value, error.validator
    invalid = f"Invalid value: {_go(value)}: {field} in body"
    if kind == "type":
        got = _json_type(value)
        return [
            FieldError(
                field,
                "FieldValueTypeInvalid",
                f'Invalid value: "{got}": {field} in body must be of type {bound}: "{got}"',
                error.message,
            )
        ]
    if kind == "required":
        # One error per missing property, named in jsonschema's message ("'x' is a ...").
        key = ast.literal_eval(error.message.split(" is a required property")[0])
        where = _path([*error.absolute_path, key])
        return [FieldError(where, "FieldValueRequired", "Required value", error.message)]
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in bound)
        message = f"Unsupported value: {json.dumps(value)}: supported values: {supported}"
        return [FieldError(field, "FieldValueNotSupported", message, error.message)]
    if kind == "maxLength":
        message = f"Too long: may not be longer than {bound}"
        return [FieldError(field, "FieldValueTooLong", message, error.message)]
    if kind == "maxItems":
        message = f"Too many: {len(value)}: must have at most {bound} items"
        return [FieldError(field, "FieldValueTooMany", message, error.message)]
    exclusive = bool(error.schema.get(f"exclusive{kind[:1].upper()}{kind[1:]}"))
    words = {
        "minimum": f"should be greater than{'' if exclusive else ' or equal to'} {_go(bound)}",
        "maximum": f"should be less than{'' if exclusive else ' or equal to'} {_go(bound)}",
        "minLength": f"should be at least {bound} chars long",
        "pattern": f"should match '{bound}'",
    }
    if kind == "minItems":
        message = f"Invalid value: {len(value)}: {field} in body should have at least {bound} items"
    elif kind in words:
        message = f"{invalid} {words[kind]}"
    else:
        message = f"Invalid value: {_go(value)}: {error.message}"
    return [FieldError(field, "FieldValueInvalid", message, error.message)]


@functools.cache
def _program(env: celpy.Environment, rule: str) -> Any:
    # Compiled once: the emulator admits every WorkerPool write (thousands in a benchmark).
    return env.program(env.compile(rule))


def _cel_field_errors(
    schema: dict[str, Any], value: Any, env: celpy.Environment, at: tuple[Any, ...] = ()
) -> list[FieldError]:
    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = _program(env, rule["rule"])
        result = program.evaluate({"self": celpy.json_to_cel(_as_cel_numbers(schema, value))})
        if not bool(result):
            message = f'Invalid value: "{_json_type(value)}": {rule["message"]}'
            errors.append(FieldError(_path(at), "FieldValueInvalid", message, rule["message"]))
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += _cel_field_errors(sub, value[key], env, (*at, key))
    # The API server enforces set and map-list semantics itself (JSON Schema would say
    # uniqueItems): the second occurrence is the duplicate.
    list_type = schema.get("x-kubernetes-list-type") if isinstance(value, list) else None
    if list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for index, item in enumerate(value):
            key = item if list_type == "set" else {k: item.get(k) for k in keys}
            if json.dumps(key, sort_keys=True) in seen:
                detail = f"{value} has non-unique elements"
                message = f"Duplicate value: {json.dumps(key)}"
                errors.append(
                    FieldError(_path((*at, index)), "FieldValueDuplicate", message, detail)
                )
            seen.add(json.dumps(key, sort_keys=True))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _cel_field_errors(schema["items"], item, env, (*at, index))
    return errors


@functools.cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def _checkers() -> tuple[jsonschema.Draft4Validator, celpy.Environment]:
    return jsonschema.Draft4Validator(_schema()), celpy.Environment()


def field_errors(obj: dict[str, Any]) -> list[FieldError]:
    """What kube-apiserver v1.26 with Tide's CRD says of this (decoded) WorkerPool: the
    schema's errors, then the CEL rules' unless a schema error blocks them."""
    validator, env = _checkers()
    errors = [found for error in validator.iter_errors(obj) for found in _schema_error(error)]
    if any(error.reason in BLOCKING for error in errors):
        return [*errors, NOT_CHECKED]
    return errors + _cel_field_errors(_schema(), obj, env)


def _decode(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and not isinstance(extra, dict):
            return value  # metadata: ObjectMeta, the server's own
        out = {}
        for key, sub in value.items():
            inner = (props or {}).get(key) or (extra if isinstance(extra, dict) else None)
            if inner is None or (sub is None and not inner.get("nullable")):
                continue  # pruned: unknown to the schema, or a null it cannot hold
            out[key] = _decode(inner, sub)
        for key, inner in (props or {}).items():
            if key not in out and "default" in inner:
                out[key] = _decode(inner, json.loads(json.dumps(inner["default"])))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_decode(schema["items"], item) for item in value]
    numeric = schema.get("type") in ("integer", "number")
    if numeric and isinstance(value, float) and value.is_integer():
        return int(value)  # Go reads 2.0 as the integer 2, and writes the float 60.0 as 60
    return value


def decode(obj: dict[str, Any]) -> dict[str, Any]:
    """The body as the server holds it before validation: pruned, then defaulted."""
    decoded: dict[str, Any] = _decode(_schema(), obj)
    return decoded


@pytest.fixture(scope="session")
def crd_schema() -> dict[str, Any]:
    return _schema()


@pytest.fixture(scope="session")
def admit(crd_schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    def check(obj: dict[str, Any]) -> list[str]:
        return [error.detail for error in field_errors(obj) if error.detail is not None]

    return check


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, yaml.safe_load(p.read_text())) for p in EXAMPLES]
