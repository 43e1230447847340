"""Cancel means one thing for queued, scheduled and running jobs, on real workers and the
real broker (issue 12, item 4): waiting work ends ``revoked`` at once and a worker holding
a scheduled message lets go of it; running work keeps its state (no finish time) until the
worker reports how it ended; cancelling a workflow's step settles the whole workflow.

Marked ``broker``: ``make test`` runs these once on Redis and again on RabbitMQ.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tide.celery import app
from tide.exporter import read_queues
from tide.jobs.models import Job, JobState

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Any:
    return celery_worker


def submit(api: APIClient, body: dict[str, Any], path: str = "/api/jobs/") -> dict[str, Any]:
    response = api.post(path, body, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def cancel(api: APIClient, job_id: str, terminate: bool = False) -> dict[str, Any]:
    response = api.post(f"/api/jobs/{job_id}/cancel/", {"terminate": terminate}, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def held_by(worker: Any, job_id: str) -> bool:
    """True while ``worker`` holds the job's message until its eta (Celery's inspect)."""
    replies = app.control.inspect(destination=[worker.hostname], timeout=2).scheduled() or {}
    return any(entry["request"]["id"] == job_id for entry in replies.get(worker.hostname, []))


@pytest.mark.parametrize("terminate", [False, True])
def test_cancelling_a_scheduled_job_releases_the_worker_holding_it(
    api: APIClient, wait: Any, celery_worker: Any, terminate: bool
) -> None:
    # An hour ahead: the worker takes the message at once and holds it until then.
    job = submit(api, {"task": "tide.samples.add", "args": [1, 2], "countdown": 3600})
    wait(lambda: held_by(celery_worker, job["id"]), what="the worker to hold the eta message")
    before = read_queues(["default"])[0].scheduled
    assert before is None or before >= 1

    answer = cancel(api, job["id"], terminate=terminate)
    # It was waiting: final now, and it says when it was asked.
    assert answer["state"] == "revoked"
    assert answer["finished_at"]
    assert answer["cancel_requested_at"]
    # The worker lets go of the message now, not in an hour: nothing held, nothing
    # counted as scheduled, so the autoscaler may take the worker away.
    wait(lambda: not held_by(celery_worker, job["id"]), what="the worker to release it")
    if before is not None:  # Redis reads it exactly; RabbitMQ's count is another's
        # Jobs of earlier tests may be held too (hours ahead): ours is one less.
        wait(
            lambda: read_queues(["default"])[0].scheduled == before - 1,
            what=f"the scheduled count to drop from {before}",
        )
    row = Job.objects.get(id=job["id"])
    assert (row.state, row.attempts, row.error) == (JobState.REVOKED, 0, "revoked by client")


def test_cancelling_a_running_job_without_terminate_lets_it_finish(
    api: APIClient, wait: Any, job_done: Any
) -> None:
    job = submit(api, {"task": "tide.samples.io_bound", "args": [2]})
    wait(lambda: Job.objects.get(id=job["id"]).state == JobState.STARTED, what="job to start")
    answer = cancel(api, job["id"])
    # Still running: no finish time, the request is recorded.
    assert (answer["state"], answer["finished_at"]) == ("started", None)
    assert answer["cancel_requested_at"]
    row = job_done(job["id"], timeout=60)
    assert row.state == JobState.SUCCEEDED
    assert row.result is not None
    assert row.cancel_requested_at is not None
    assert row.finished_at > row.cancel_requested_at


def test_cancelling_a_running_job_with_terminate_stops_it(
    api: APIClient, wait: Any, job_done: Any
) -> None:
    job = submit(api, {"task": "tide.samples.io_bound", "args": [60]})
    wait(lambda: Job.objects.get(id=job["id"]).state == JobState.STARTED, what="job to start")
    answer = cancel(api, job["id"], terminate=True)
    # Never a finish time while the state says it runs (the worker may already have
    # reported it stopped by the time the answer is rendered).
    assert (answer["state"] == "revoked") == (answer["finished_at"] is not None)
    row = job_done(job["id"], timeout=30)
    assert (row.state, row.result, row.error) == (JobState.REVOKED, None, "terminated by client")
    assert row.finished_at >= row.cancel_requested_at


def test_cancelling_a_chain_step_settles_the_chain(
    api: APIClient, wait: Any, job_done: Any
) -> None:
    workflow = submit(
        api,
        {
            "type": "chain",
            "steps": [
                {"task": "tide.samples.io_bound", "args": [2]},
                {"task": "tide.samples.add", "args": [1]},
                {"task": "tide.samples.add", "args": [1]},
            ],
        },
        "/api/workflows/",
    )
    first, second, third = (s["id"] for s in workflow["steps"])
    wait(lambda: Job.objects.get(id=first).state == JobState.STARTED, what="step 0 to start")
    answer = cancel(api, second)
    assert answer["state"] == "revoked"
    # The later step will never run either: final now, not pending for ever.
    assert Job.objects.get(id=third).state == JobState.REVOKED
    parent = job_done(workflow["id"], timeout=60)
    assert parent.state == JobState.REVOKED
    assert parent.finished_at is not None
    steps = list(parent.steps.order_by("position"))
    assert str(steps[0].id) == first
    assert [s.state for s in steps] == [JobState.SUCCEEDED, JobState.REVOKED, JobState.REVOKED]
    assert [s.attempts for s in steps] == [1, 0, 0]


def test_cancelling_a_chord_header_step_revokes_the_callback(api: APIClient, job_done: Any) -> None:
    workflow = submit(
        api,
        {
            "type": "chord",
            "steps": [{"task": "tide.samples.add", "args": [i, 1]} for i in range(3)],
            "callback": {"task": "tide.samples.total"},
            "countdown": 5,
        },
        "/api/workflows/",
    )
    header, callback = workflow["steps"][0]["id"], workflow["steps"][-1]["id"]
    cancel(api, header)
    assert Job.objects.get(id=callback).state == JobState.REVOKED
    parent = job_done(workflow["id"], timeout=60)
    assert parent.state == JobState.REVOKED
    states = [s.state for s in parent.steps.order_by("position")]
    # The other members run, as in Celery; the body never does.
    assert states == [JobState.REVOKED, JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.REVOKED]


def test_cancelling_a_whole_workflow_while_a_step_runs(
    api: APIClient, wait: Any, job_done: Any
) -> None:
    workflow = submit(
        api,
        {
            "type": "chain",
            "steps": [
                {"task": "tide.samples.io_bound", "args": [2]},
                {"task": "tide.samples.add", "args": [1]},
            ],
        },
        "/api/workflows/",
    )
    first = workflow["steps"][0]["id"]
    wait(lambda: Job.objects.get(id=first).state == JobState.STARTED, what="step 0 to start")
    answer = cancel(api, workflow["id"])
    # The running step runs on, so the workflow is not finished yet.
    assert (answer["state"], answer["finished_at"]) == ("started", None)
    assert [s["state"] for s in answer["steps"]] == ["started", "revoked"]
    parent = job_done(workflow["id"], timeout=60)
    assert parent.state == JobState.REVOKED
