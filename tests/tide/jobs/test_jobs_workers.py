"""Jobs run by real Celery worker processes on the real broker: submit through the API,
wait for the job row to reach its final state, assert state, progress and result.

Marked ``broker``: ``make test`` runs these once on Redis and again on RabbitMQ.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]


@pytest.fixture(autouse=True)
def _worker(celery_worker: Any) -> Any:
    return celery_worker


def submit(api: APIClient, body: dict[str, Any], path: str = "/api/jobs/") -> str:
    response = api.post(path, body, format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def test_task_succeeds_with_result(api: APIClient, job_done: Any) -> None:
    job = job_done(submit(api, {"task": "tide.samples.add", "args": [2, 3]}))
    assert (job.state, job.result, job.attempts) == (JobState.SUCCEEDED, 5, 1)
    assert job.worker.startswith("test-")
    assert job.created_at <= job.started_at <= job.finished_at


def test_progress_history_is_recorded(api: APIClient, job_done: Any) -> None:
    job_id = submit(
        api,
        {"task": "tide.samples.with_progress", "kwargs": {"steps": 4, "seconds_per_step": 0.01}},
    )
    job = job_done(job_id)
    assert job.state == JobState.SUCCEEDED
    history = api.get(f"/api/jobs/{job_id}/").json()["progress_history"]
    assert [round(p["percent"]) for p in history] == [25, 50, 75, 100]
    assert history[-1]["message"] == "step 4 of 4"


def test_failure_is_recorded_with_the_error(api: APIClient, job_done: Any) -> None:
    job = job_done(submit(api, {"task": "tide.samples.fail", "args": ["boom"]}))
    assert job.state == JobState.FAILED
    assert job.error == "ValueError: boom"


def test_retries_with_backoff_then_succeeds(api: APIClient, job_done: Any) -> None:
    job = job_done(submit(api, {"task": "tide.samples.flaky", "kwargs": {"failures": 2}}))
    assert job.state == JobState.SUCCEEDED, (job.error, job.retries, job.attempts)
    assert (job.result, job.retries, job.attempts) == (2, 2, 3)


def test_soft_time_limit_lets_the_task_clean_up(api: APIClient, job_done: Any) -> None:
    job = job_done(submit(api, {"task": "tide.samples.time_limited", "kwargs": {"seconds": 2}}))
    assert (job.state, job.result) == (JobState.SUCCEEDED, "stopped at the soft time limit")


def test_hard_time_limit_fails_the_job(api: APIClient, job_done: Any) -> None:
    job = job_done(
        submit(
            api,
            {
                "task": "tide.samples.time_limited",
                "kwargs": {"seconds": 5, "ignore_soft_limit": True},
            },
        )
    )
    assert job.state == JobState.FAILED
    assert "TimeLimitExceeded" in job.error


def test_chain_passes_results_along(api: APIClient, job_done: Any) -> None:
    body = {
        "type": "chain",
        "steps": [
            {"task": "tide.samples.add", "args": [1, 2]},
            {"task": "tide.samples.multiply", "args": [10]},
            {"task": "tide.samples.add", "args": [0.5]},
        ],
    }
    job = job_done(submit(api, body, "/api/workflows/"))
    assert (job.state, job.result, job.progress) == (JobState.SUCCEEDED, 30.5, 100.0)
    assert [s.result for s in job.steps.order_by("position")] == [3, 30, 30.5]


def test_group_collects_every_result(api: APIClient, job_done: Any) -> None:
    body = {
        "type": "group",
        "steps": [{"task": "tide.samples.add", "args": [i, i]} for i in range(5)],
    }
    job = job_done(submit(api, body, "/api/workflows/"))
    assert (job.state, job.result) == (JobState.SUCCEEDED, [0, 2, 4, 6, 8])


def test_chord_feeds_the_callback(api: APIClient, job_done: Any) -> None:
    body = {
        "type": "chord",
        "steps": [{"task": "tide.samples.add", "args": [i, 1]} for i in range(4)],
        "callback": {"task": "tide.samples.total"},
    }
    job = job_done(submit(api, body, "/api/workflows/"))
    assert (job.state, job.result) == (JobState.SUCCEEDED, 10)


def test_failed_chain_step_skips_the_rest(api: APIClient, job_done: Any) -> None:
    body = {
        "type": "chain",
        "steps": [
            {"task": "tide.samples.add", "args": [1, 2]},
            {"task": "tide.samples.fail", "args": ["step two broke"], "immutable": True},
            {"task": "tide.samples.add", "args": [1]},
        ],
    }
    job = job_done(submit(api, body, "/api/workflows/"))
    assert job.state == JobState.FAILED
    assert job.error == "ValueError: step two broke"
    assert [s.state for s in job.steps.order_by("position")] == [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.REVOKED,
    ]


def test_cancelled_job_never_runs(api: APIClient, job_done: Any, wait: Any) -> None:
    job_id = submit(api, {"task": "tide.samples.add", "args": [1, 2], "countdown": 2})
    assert api.post(f"/api/jobs/{job_id}/cancel/").json()["state"] == "revoked"
    # A later job on the same queue finishing shows the worker has moved past it.
    job_done(submit(api, {"task": "tide.samples.add", "args": [1, 1], "countdown": 3}))
    job = Job.objects.get(id=job_id)
    assert (job.state, job.attempts, job.result) == (JobState.REVOKED, 0, None)


def test_cancel_terminates_a_running_job(api: APIClient, job_done: Any, wait: Any) -> None:
    job_id = submit(api, {"task": "tide.samples.io_bound", "args": [30]})
    wait(lambda: Job.objects.get(id=job_id).state == JobState.STARTED, what="job to start")
    api.post(f"/api/jobs/{job_id}/cancel/", {"terminate": True}, format="json")
    job = job_done(job_id, timeout=20)
    assert job.state == JobState.REVOKED


def test_expired_job_is_revoked(api: APIClient, job_done: Any) -> None:
    job = job_done(
        submit(api, {"task": "tide.samples.add", "args": [1, 2], "countdown": 2, "expires_in": 1})
    )
    assert (job.state, job.error) == (JobState.REVOKED, "expired")


def test_killed_worker_process_task_is_redelivered(
    api: APIClient, job_done: Any, wait: Any, celery_worker: Any
) -> None:
    job_id = submit(api, {"task": "tide.samples.io_bound", "args": [1.5]})
    job = wait(
        lambda: (j := Job.objects.get(id=job_id)).state == JobState.STARTED and j,
        what="job to start",
    )
    # Kill the pool process running the task, as the OOM killer would: with late acks and
    # reject-on-worker-lost the message goes back to the queue and runs again.
    assert job.attempts == 1
    for pid in celery_worker.pool_pids():
        os.kill(pid, signal.SIGKILL)
    job = job_done(job_id, timeout=60)
    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 2


def test_a_retried_submission_runs_once(api: APIClient, job_done: Any) -> None:
    # The client's first answer was lost (a timeout): it sends the same request again, with
    # the same Idempotency-Key, before and after the task ran. One job, run once.
    body = {"task": "tide.samples.add", "args": [20, 22]}
    headers = {"HTTP_IDEMPOTENCY_KEY": "invoice-7"}
    first = api.post("/api/jobs/", body, format="json", **headers)
    second = api.post("/api/jobs/", body, format="json", **headers)
    assert (first.status_code, second.status_code) == (201, 200)
    job = job_done(first.json()["id"])
    third = api.post("/api/jobs/", body, format="json", **headers)
    assert third.status_code == 200
    assert third.json()["state"] == "succeeded"
    assert (job.result, job.attempts) == (42, 1)
    assert Job.objects.count() == 1
