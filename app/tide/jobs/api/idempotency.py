"""``Idempotency-Key`` on submissions: a client that retries after a timeout or a 503
gets the job it already has, never a second one.

The key is the client's (1 to 255 characters, unique per user). With it, the request's
digest (path and JSON body, keys sorted) is stored on the job row. A later request with
the same key and the same digest answers ``200`` with that job; with a different digest
it is refused with ``422`` (the key was used for something else). The uniqueness of
(owner, key) is a database constraint, so two retries racing each other cannot both
insert: the loser reads the winner's row. A submission the broker refused leaves no row
(see ``services``), so retrying it with the same key submits it for real.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request

from tide.jobs.models import Job
from tide.jobs.services import Idempotency

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class KeyReused(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"
    default_detail = (
        f"This {HEADER} was sent before with a different request; "
        "use a new key for a new submission."
    )


def from_request(request: Request) -> Idempotency | None:
    """The request's key and digest, or None without the header (400 when malformed)."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(raw) > MAX_KEY_LENGTH or not (raw.isascii() and raw.isprintable()):
        raise ValidationError({HEADER: f"Give 1 to {MAX_KEY_LENGTH} printable ASCII characters."})
    canonical = json.dumps(
        {"path": request.path, "body": request.data},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return Idempotency(key=key, digest=hashlib.sha256(canonical.encode()).hexdigest())


def earlier(request: Request, idempotency: Idempotency) -> Job | None:
    """The job this key already made for this user, if the request matches it."""
    job = Job.objects.filter(owner=request.user, idempotency_key=idempotency.key).first()
    if job is not None and job.request_digest != idempotency.digest:
        raise KeyReused()
    return job


def bulk_key_length() -> int:
    """The longest key a bulk submission takes: room for ``#<index>`` of its last job."""
    from django.conf import settings

    return MAX_KEY_LENGTH - 1 - len(str(settings.TIDE_BULK_MAX_JOBS - 1))


def for_items(idempotency: Idempotency, count: int) -> list[Idempotency]:
    """A bulk submission's key, one per item (``key#0``, ``key#1``, …), same digest.

    Each job row carries its own key, so the database's one-job-per-key rule covers bulk
    submissions too, and a retry after a partial failure finds which items are queued.
    """
    room = bulk_key_length()
    if len(idempotency.key) > room:
        raise ValidationError({HEADER: f"A bulk submission's key has at most {room} characters."})
    keys = [f"{idempotency.key}#{index}" for index in range(count)]
    return [Idempotency(key=key, digest=idempotency.digest) for key in keys]


def earlier_items(request: Request, items: list[Idempotency]) -> dict[int, Job]:
    """Jobs a bulk submission's key already made, by item index (422 on another request)."""
    index = {item.key: position for position, item in enumerate(items)}
    found: dict[int, Job] = {}
    for job in Job.objects.filter(owner=request.user, idempotency_key__in=list(index)):
        if job.request_digest != items[0].digest:
            raise KeyReused()
        found[index[job.idempotency_key]] = job
    return found


#: The header's value as the schema states it: printable ASCII, no space at either end.
KEY_PATTERN = "^[!-~]([ -~]*[!-~])?$"


def describe_header() -> dict[str, Any]:
    """The header's description for the OpenAPI schema."""
    return {
        "name": HEADER,
        "required": False,
        "description": (
            "Makes the submission safe to retry: the same key with the same body returns "
            "the job already made (200), the same key with another body is refused (422). "
            f"1 to {MAX_KEY_LENGTH} characters, unique per user."
        ),
    }
