"""Bulk submission: N jobs in one request, one transaction, one message per job published
after the commit, a bound on N; one bad item refuses them all; a broker failure part-way
says which jobs were queued, and a retry with the same key submits only the rest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kombu
import pytest
from celery.signals import before_task_publish
from django.db import connection
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)


def adds(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"task": "tide.samples.add", "args": [i, i], **extra} for i in range(n)]


def bulk(api: APIClient, jobs: Any, **headers: str) -> Any:
    return api.post("/api/jobs/bulk/", {"jobs": jobs}, format="json", **headers)


@pytest.fixture
def published() -> Iterator[list[tuple[str, bool, bool]]]:
    """(task id, row committed and visible, inside a transaction) for every publish."""
    seen: list[tuple[str, bool, bool]] = []

    def receiver(headers: dict[str, Any] | None = None, **_: Any) -> None:
        task_id = (headers or {})["id"]
        seen.append((task_id, Job.objects.filter(id=task_id).exists(), connection.in_atomic_block))

    before_task_publish.connect(receiver, weak=False)
    yield seen
    before_task_publish.disconnect(receiver)


def test_n_jobs_one_transaction_one_publish_each_after_commit(
    api: APIClient, published: list[tuple[str, bool, bool]]
) -> None:
    response = bulk(api, adds(25, priority=7))
    assert response.status_code == 201, response.content
    jobs = response.json()["jobs"]
    assert [job["args"] for job in jobs] == [[i, i] for i in range(25)]
    assert all(job["state"] == "pending" and job["priority"] == 7 for job in jobs)
    assert Job.objects.count() == 25
    # One message per job, in order, each published once its row was committed.
    assert [task_id for task_id, _, _ in published] == [job["id"] for job in jobs]
    assert all(visible and not in_transaction for _, visible, in_transaction in published)


def test_the_bound_on_n_is_a_400_before_anything(api: APIClient, settings: Any) -> None:
    settings.TIDE_BULK_MAX_JOBS = 5
    response = bulk(api, adds(6))
    assert response.status_code == 400
    assert "TIDE_BULK_MAX_JOBS" in str(response.json()["detail"]["jobs"])
    assert bulk(api, adds(5)).status_code == 201


@pytest.mark.parametrize(
    ("jobs", "error", "where"),
    [
        # An item with an argument of the wrong type: its index and the argument.
        ([*adds(2), {"task": "tide.samples.add", "args": [1, "x"]}], "invalid_arguments", 2),
        # An item naming a queue no worker consumes.
        (
            [*adds(1), {"task": "tide.samples.add", "args": [1, 2], "queue": "nowhere"}],
            "invalid",
            1,
        ),
        # An unknown task anywhere in the list.
        ([*adds(3), {"task": "no.such.task"}], "unknown_task", None),
        # No jobs at all, or not a list.
        ([], "invalid", None),
        ({"task": "tide.samples.add"}, "invalid", None),
    ],
)
def test_one_bad_item_refuses_them_all(
    api: APIClient, jobs: Any, error: str, where: int | None
) -> None:
    response = bulk(api, jobs)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == error
    if error == "invalid_arguments":
        assert body["errors"][0]["loc"][:3] == ["jobs", where, "y"]
    elif where is not None:
        assert "queue" in body["detail"]["jobs"][str(where)]
    assert Job.objects.count() == 0


def test_the_same_key_replays_and_another_body_is_422(api: APIClient) -> None:
    first = bulk(api, adds(3), HTTP_IDEMPOTENCY_KEY="batch-1")
    again = bulk(api, adds(3), HTTP_IDEMPOTENCY_KEY="batch-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    other = bulk(api, adds(4), HTTP_IDEMPOTENCY_KEY="batch-1")
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    assert Job.objects.count() == 3


def test_broker_down_is_503_and_leaves_nothing(api: APIClient, broker_down: Any) -> None:
    response = bulk(api, adds(3))
    assert response.status_code == 503
    assert (response.json()["error"], response.json()["queued"]) == ("broker_unavailable", [])
    assert Job.objects.count() == 0


def test_a_failure_part_way_says_what_was_queued_and_the_retry_sends_the_rest(
    api: APIClient, monkeypatch: pytest.MonkeyPatch, published: list[tuple[str, bool, bool]]
) -> None:
    # A broker cannot be made to fail on cue after two messages: the third publish on
    # kombu's real producer raises what kombu raises when the connection drops.
    real = kombu.Producer.publish
    calls = {"n": 0}

    def publish(self: kombu.Producer, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OperationalError("connection reset by peer")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(kombu.Producer, "publish", publish)
    response = bulk(api, adds(5), HTTP_IDEMPOTENCY_KEY="batch-2")
    assert response.status_code == 503, response.content
    queued = [job["id"] for job in response.json()["queued"]]
    assert len(queued) == 2
    assert sorted(map(str, Job.objects.values_list("id", flat=True))) == sorted(queued)
    monkeypatch.setattr(kombu.Producer, "publish", real)
    retry = bulk(api, adds(5), HTTP_IDEMPOTENCY_KEY="batch-2")
    assert retry.status_code == 201, retry.content
    ids = [job["id"] for job in retry.json()["jobs"]]
    assert ids[:2] == queued
    assert Job.objects.count() == 5
    # Every job was published exactly once over both requests.
    sent = [task_id for task_id, _, _ in published]
    assert sorted(set(sent) & set(ids)) == sorted(ids)
    assert len([t for t in sent if t in ids]) == 5


@pytest.mark.broker
def test_bulk_jobs_run_on_a_real_worker(api: APIClient, celery_worker: Any, job_done: Any) -> None:
    response = bulk(api, adds(20))
    assert response.status_code == 201, response.content
    results = [job_done(job["id"]) for job in response.json()["jobs"]]
    assert [(job.state, job.result) for job in results] == [
        (JobState.SUCCEEDED, 2 * i) for i in range(20)
    ]
