"""The OpenAPI schema says what the API does: every status it answers and every constraint
it enforces (a drf-spectacular postprocessing hook, run each time the schema is served).

drf-spectacular documents the success answers a view declares. The refusals come from
layers it does not see (authentication, the JSON parser, the body limit, the query-string
check, the broker) and the bounds from settings read per request; they are added here, so
a client generated from the schema, or schemathesis, meets no undocumented answer. The
schema is never recursive (a canvas's nesting is bounded and written out), which keeps
generators fast.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.conf import settings

from tide.jobs.api import idempotency
from tide.jobs.api.serializers import MAX_DELAY_SECONDS, known_queues
from tide.jobs.registry import registered_tasks

METHODS = ("get", "post", "put", "patch", "delete")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every refusal: a code and the reason; some codes add fields "
    "(known_tasks, errors, queued).",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A stable code, e.g. invalid."},
        "detail": {"description": "The reason: a message, or messages per field."},
    },
}

REASONS = {
    "400": "invalid, parse_error, invalid_cursor, unknown_task or invalid_arguments: "
    "the request is malformed or does not fit (the detail names the field or parameter). "
    "A NUL (%00) in any query parameter is refused here too.",
    "401": "not_authenticated or authentication_failed: no token, or a wrong one.",
    "404": "not_found: no such object, or not yours.",
    "409": "job_not_finished, job_is_a_step or not_rerunnable.",
    "413": "payload_too_large: the body is above TIDE_MAX_REQUEST_BYTES.",
    "415": "unsupported_media_type: send application/json.",
    "422": "idempotency_key_reused: the Idempotency-Key was used with another request.",
    "503": "broker_unavailable: nothing was queued (see Retry-After).",
}

# Submissions publish to the broker: they may answer 503.
PUBLISHING = {
    ("post", "/api/jobs/"),
    ("post", "/api/jobs/bulk/"),
    ("post", "/api/workflows/"),
    ("post", "/api/jobs/{id}/rerun/"),
}


def _error(code: str, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or REASONS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _statuses(path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    security = operation.get("security")
    if security and {} not in security:
        responses.setdefault("401", _error("401"))
    # Any operation: a query parameter with a NUL is refused before the view runs.
    responses.setdefault("400", _error("400"))
    if "{" in path:
        responses.setdefault("404", _error("404"))
    if "requestBody" in operation:
        responses.setdefault("413", _error("413"))
        responses.setdefault("415", _error("415"))
    if (method, path) in PUBLISHING:
        responses.setdefault("503", _error("503"))
    for code, response in responses.items():
        # Refusals the views declared by description only get the error shape too.
        if code[0] in "45" and "content" not in response:
            response["content"] = _error(code)["content"]
    return responses


def _parameters(path: str, operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        schema = parameter.setdefault("schema", {})
        if parameter["name"] == idempotency.HEADER:
            schema.update(
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": idempotency.bulk_key_length()
                    if path == "/api/jobs/bulk/"
                    else idempotency.MAX_KEY_LENGTH,
                    "pattern": idempotency.KEY_PATTERN,
                }
            )
        elif parameter["name"] == "page_size":
            schema.update({"type": "integer", "minimum": 1, "maximum": 500})
        elif parameter["in"] == "query" and schema.get("type") == "string":
            # %00 is refused on every parameter (PostgreSQL cannot compare it).
            schema.setdefault("pattern", "^[^\\x00]*$")


def _request_bounds(schemas: dict[str, Any]) -> None:
    """Bounds read from settings and the queues this deployment knows."""
    queues = known_queues()
    maxima = {
        "time_limit": settings.TIDE_JOB_MAX_TIME_LIMIT_SECONDS,
        "soft_time_limit": settings.TIDE_JOB_MAX_TIME_LIMIT_SECONDS,
        "max_retries": settings.TIDE_JOB_MAX_RETRIES,
        "backoff": settings.TIDE_JOB_MAX_RETRY_DELAY_SECONDS,
        "backoff_max": settings.TIDE_JOB_MAX_RETRY_DELAY_SECONDS,
    }
    for name, schema in schemas.items():
        if not name.endswith("Request") or schema.get("type") != "object":
            continue
        # Unknown fields are refused by name (StrictSerializer).
        schema["additionalProperties"] = False
        properties = schema.get("properties", {})
        for field, bound in maxima.items():
            if field in properties and "maximum" not in properties[field]:
                properties[field]["maximum"] = bound
        if "queue" in properties:
            nullable = properties["queue"].get("nullable", False)
            properties["queue"] = {
                "type": "string",
                "enum": [*queues, *([None] if nullable else [])],
                "nullable": nullable,
                "description": "One of the queues this deployment knows (GET /api/queues/).",
            }
        if "eta" in properties:
            properties["eta"]["description"] = (
                f"Run no earlier than this: at most {MAX_DELAY_SECONDS // 86400} days ahead, "
                "like countdown (a time in the past runs now)."
            )
        if "task" in properties and properties["task"].get("type") == "string":
            properties["task"]["enum"] = list(registered_tasks())
        if name == "ScheduleRequest":
            # Exactly one kind of schedule.
            schema["oneOf"] = [{"required": [kind]} for kind in ("every", "crontab", "at")]
            if "timezone" in properties:
                properties["timezone"]["enum"] = sorted(zoneinfo.available_timezones())
        for first, second in (("eta", "countdown"), ("expires", "expires_in")):
            if first in properties and second in properties:
                # One or the other, not both.
                schema.setdefault("allOf", []).append({"not": {"required": [first, second]}})
        if "steps" in properties:
            properties["steps"]["minItems"] = 1
        if "jobs" in properties and properties["jobs"].get("type") == "array":
            properties["jobs"]["minItems"] = 1
            properties["jobs"]["maxItems"] = settings.TIDE_BULK_MAX_JOBS


def document_refusals(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular ``POSTPROCESSING_HOOKS`` entry (after its enum hook)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method in METHODS:
                _statuses(path, method, operation)
                _parameters(path, operation)
    _request_bounds(schemas)
    return result
