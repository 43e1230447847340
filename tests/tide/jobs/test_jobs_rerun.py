"""Deleting and re-running jobs: only finished top-level jobs, never someone else's; a
re-run is a new job pointing back at the original, run by a real worker like any other."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobProgress, JobState

pytestmark = pytest.mark.django_db(transaction=True)

CHAIN = {
    "type": "chain",
    "steps": [
        {"task": "tide.samples.add", "args": [1, 2]},
        {"task": "tide.samples.multiply", "args": [10]},
    ],
}


def submit(api: APIClient, body: dict[str, Any], path: str = "/api/jobs/") -> str:
    response = api.post(path, body, format="json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def finish(job_id: str, state: str = JobState.SUCCEEDED) -> None:
    Job.objects.filter(id=job_id).update(state=state)
    Job.objects.filter(parent_id=job_id).update(state=state)


def test_delete_a_finished_workflow_takes_its_steps_and_history(api: APIClient) -> None:
    job_id = submit(api, CHAIN, "/api/workflows/")
    finish(job_id)
    step = Job.objects.filter(parent_id=job_id).first()
    assert step is not None
    JobProgress.objects.create(job=step, percent=50)
    response = api.delete(f"/api/jobs/{job_id}/")
    assert response.status_code == 204, response.content
    assert not Job.objects.exists()
    assert not JobProgress.objects.exists()
    assert api.get(f"/api/jobs/{job_id}/").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        # Deleting waiting work would lose it silently: cancel first.
        ("delete", ""),
        # Re-running waiting work would run it twice.
        ("post", "rerun/"),
    ],
)
def test_unfinished_jobs_are_409_and_stay(api: APIClient, method: str, suffix: str) -> None:
    job_id = submit(api, {"task": "tide.samples.add", "args": [1, 2]})
    response = getattr(api, method)(f"/api/jobs/{job_id}/{suffix}")
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "job_not_finished"
    assert Job.objects.count() == 1


@pytest.mark.parametrize(("method", "suffix"), [("delete", ""), ("post", "rerun/")])
def test_a_step_is_acted_on_through_its_workflow(api: APIClient, method: str, suffix: str) -> None:
    job_id = submit(api, CHAIN, "/api/workflows/")
    finish(job_id)
    step_id = Job.objects.filter(parent_id=job_id).values_list("id", flat=True).first()
    response = getattr(api, method)(f"/api/jobs/{step_id}/{suffix}")
    assert response.status_code == 409
    assert response.json()["error"] == "job_is_a_step"
    assert job_id in response.json()["detail"]
    assert Job.objects.count() == 3


@pytest.mark.parametrize(("method", "suffix"), [("delete", ""), ("post", "rerun/")])
def test_someone_elses_job_is_404(
    api: APIClient, other_api: APIClient, method: str, suffix: str
) -> None:
    job_id = submit(api, {"task": "tide.samples.add", "args": [1, 2]})
    finish(job_id)
    assert getattr(other_api, method)(f"/api/jobs/{job_id}/{suffix}").status_code == 404
    assert Job.objects.count() == 1


def test_rerun_keeps_what_was_asked_but_not_the_timing(api: APIClient) -> None:
    body = {
        "task": "tide.samples.add",
        "args": [1, 2],
        "priority": 8,
        "countdown": 600,
        "expires_in": 3600,
        "time_limit": 30,
        "retry": {"max_retries": 2},
    }
    job_id = submit(api, body)
    finish(job_id, JobState.FAILED)
    response = api.post(f"/api/jobs/{job_id}/rerun/", HTTP_IDEMPOTENCY_KEY="again-1")
    assert response.status_code == 201, response.content
    again = response.json()
    assert response["Location"] == again["url"]
    assert (again["rerun_of"], again["state"], again["args"]) == (job_id, "pending", [1, 2])
    assert (again["priority"], again["time_limit"], again["retry_policy"]["max_retries"]) == (
        8,
        30,
        2,
    )
    assert (again["eta"], again["expires"]) == (None, None)
    # The same key again is the same re-run, not a third job.
    replay = api.post(f"/api/jobs/{job_id}/rerun/", HTTP_IDEMPOTENCY_KEY="again-1")
    assert (replay.status_code, replay.json()["id"]) == (200, again["id"])
    assert Job.objects.count() == 2
    # Deleting the original keeps the re-run, which no longer points anywhere.
    assert api.delete(f"/api/jobs/{job_id}/").status_code == 204
    assert api.get(f"/api/jobs/{again['id']}/").json()["rerun_of"] is None


@pytest.mark.broker
class TestOnRealWorkers:
    @pytest.fixture(autouse=True)
    def _worker(self, celery_worker: Any) -> Any:
        return celery_worker

    def test_a_failed_task_rerun_runs_again(self, api: APIClient, job_done: Any) -> None:
        first = job_done(submit(api, {"task": "tide.samples.fail", "args": ["boom"]}))
        assert first.state == JobState.FAILED
        response = api.post(f"/api/jobs/{first.id}/rerun/")
        assert response.status_code == 201, response.content
        again = job_done(response.json()["id"])
        assert (again.state, again.error, again.attempts) == (
            JobState.FAILED,
            "ValueError: boom",
            1,
        )
        assert again.rerun_of_id == first.id

    def test_a_workflow_rerun_runs_every_step_again(self, api: APIClient, job_done: Any) -> None:
        first = job_done(submit(api, CHAIN, "/api/workflows/"))
        assert (first.state, first.result) == (JobState.SUCCEEDED, 30)
        response = api.post(f"/api/jobs/{first.id}/rerun/")
        assert response.status_code == 201, response.content
        assert [s["task_name"] for s in response.json()["steps"]] == [
            "tide.samples.add",
            "tide.samples.multiply",
        ]
        again = job_done(response.json()["id"])
        assert (again.state, again.result, again.kind) == (JobState.SUCCEEDED, 30, "chain")
        assert [s.result for s in again.steps.order_by("position")] == [3, 30]
        assert api.delete(f"/api/jobs/{first.id}/").status_code == 204
        assert Job.objects.filter(parent_id=first.id).count() == 0
        assert Job.objects.get(id=again.id).steps.count() == 2
