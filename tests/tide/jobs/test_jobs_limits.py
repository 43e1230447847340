"""Per-job time limits and retry policy: what the API accepts within the platform's bounds
(settings), what it refuses with a 400 naming the field, and what real workers do with
them (a job killed at its own limit, retried as often and as soon as it asked)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)

ADD = {"task": "tide.samples.add", "args": [1, 2]}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        # Above the platform's bound on time limits (TIDE_JOB_MAX_TIME_LIMIT_SECONDS=60 here).
        ({"time_limit": 61}, "time_limit"),
        ({"soft_time_limit": 61}, "soft_time_limit"),
        # A soft limit past the hard one could never fire first.
        ({"time_limit": 5, "soft_time_limit": 6}, "soft_time_limit"),
        # Zero and negative limits mean nothing.
        ({"time_limit": 0}, "time_limit"),
        ({"time_limit": -1}, "time_limit"),
        # More retries than the platform allows (TIDE_JOB_MAX_RETRIES=3 here).
        ({"retry": {"max_retries": 4}}, "max_retries"),
        ({"retry": {"max_retries": -1}}, "max_retries"),
        # Delays above TIDE_JOB_MAX_RETRY_DELAY_SECONDS=100 here.
        ({"retry": {"backoff": 101}}, "backoff"),
        ({"retry": {"backoff": 1, "backoff_max": 101}}, "backoff_max"),
        # The policy is an object.
        ({"retry": 3}, "retry"),
    ],
)
def test_limits_outside_the_bounds_are_400_naming_the_field(
    api: APIClient, settings: Any, extra: dict[str, Any], field: str
) -> None:
    settings.TIDE_JOB_MAX_TIME_LIMIT_SECONDS = 60
    settings.TIDE_JOB_MAX_RETRIES = 3
    settings.TIDE_JOB_MAX_RETRY_DELAY_SECONDS = 100
    for path, body in (
        ("/api/jobs/", {**ADD, **extra}),
        ("/api/workflows/", {"type": "group", "steps": [ADD], **extra}),
    ):
        response = api.post(path, body, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["error"] == "invalid"
        assert field in str(response.json()["detail"])
    assert Job.objects.count() == 0


def test_limits_within_the_bounds_are_recorded_and_shown(api: APIClient, settings: Any) -> None:
    settings.TIDE_JOB_MAX_TIME_LIMIT_SECONDS = 60
    body = {
        **ADD,
        "time_limit": 60,
        "soft_time_limit": 30.5,
        "retry": {"max_retries": 2, "backoff": 0.5, "backoff_max": 4},
    }
    response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    shown = response.json()
    assert (shown["time_limit"], shown["soft_time_limit"]) == (60, 30.5)
    assert shown["retry_policy"] == {
        "max_retries": 2,
        "backoff": 0.5,
        "backoff_max": 4,
        "jitter": True,
    }
    job = Job.objects.get(id=shown["id"])
    assert (job.time_limit, job.soft_time_limit, job.retry_policy) == (
        60,
        30.5,
        shown["retry_policy"],
    )


@pytest.mark.broker
class TestOnRealWorkers:
    @pytest.fixture(autouse=True)
    def _worker(self, celery_worker: Any) -> Any:
        return celery_worker

    def submit(self, api: APIClient, body: dict[str, Any]) -> str:
        response = api.post("/api/jobs/", body, format="json")
        assert response.status_code == 201, response.content
        return str(response.json()["id"])

    def test_a_job_is_killed_at_its_own_hard_limit(self, api: APIClient, job_done: Any) -> None:
        # io_bound would sleep 30 s under the platform's hour: the job's own second ends it.
        job = job_done(
            self.submit(api, {"task": "tide.samples.io_bound", "args": [30], "time_limit": 1})
        )
        assert job.state == JobState.FAILED
        assert "TimeLimitExceeded" in job.error

    def test_a_job_gets_its_own_soft_limit(self, api: APIClient, job_done: Any) -> None:
        job = job_done(
            self.submit(
                api, {"task": "tide.samples.io_bound", "args": [30], "soft_time_limit": 0.5}
            )
        )
        assert job.state == JobState.FAILED
        assert job.error.startswith("SoftTimeLimitExceeded")

    def test_fewer_retries_than_the_task_allows(self, api: APIClient, job_done: Any) -> None:
        # flaky retries 5 times by default; this job allows one retry, so the third
        # failure is never reached: the second attempt's error is final.
        body = {
            "task": "tide.samples.flaky",
            "kwargs": {"failures": 3},
            "retry": {"max_retries": 1, "backoff": 0.05},
        }
        job = job_done(self.submit(api, body))
        assert (job.state, job.attempts, job.retries) == (JobState.FAILED, 2, 1)
        assert job.error == "TransientError: attempt 2 failed"

    def test_a_quick_backoff_retries_until_success(self, api: APIClient, job_done: Any) -> None:
        body = {
            "task": "tide.samples.flaky",
            "kwargs": {"failures": 3},
            "retry": {"max_retries": 3, "backoff": 0.05, "backoff_max": 0.1, "jitter": False},
        }
        job = job_done(self.submit(api, body))
        assert (job.state, job.result, job.attempts, job.retries) == (JobState.SUCCEEDED, 3, 4, 3)


@pytest.mark.parametrize(
    ("policy", "retries", "delay"),
    [
        # The first retry waits the backoff itself, each next one twice the last.
        ({"backoff": 0.5, "jitter": False}, 0, 0.5),
        ({"backoff": 0.5, "jitter": False}, 3, 4.0),
        # backoff_max caps the doubling.
        ({"backoff": 0.5, "backoff_max": 3, "jitter": False}, 3, 3.0),
        # Zero means at once.
        ({"backoff": 0, "jitter": False}, 5, 0.0),
        # A huge retry count does not overflow: the cap still holds.
        ({"backoff": 1, "backoff_max": 60, "jitter": False}, 10_000, 60.0),
    ],
)
def test_backoff_delays(policy: dict[str, Any], retries: int, delay: float) -> None:
    from tide.jobs.tracking import _backoff

    assert _backoff(policy, retries=retries) == delay


def test_jitter_waits_a_random_part_of_the_delay() -> None:
    from tide.jobs.tracking import _backoff

    delays = {_backoff({"backoff": 2, "jitter": True}, retries=1) for _ in range(50)}
    assert all(0 <= d <= 4 for d in delays)
    assert len(delays) > 1


def test_a_jobs_own_retry_limit_stays_with_that_job(
    api: APIClient,
    private_redis: Any,
    start_worker: Any,
    worker_env: dict[str, str],
    job_done: Any,
    wait: Any,
) -> None:
    # One pool process runs both jobs, so whatever the first leaves on the task object
    # (one per process), the second meets. A private broker keeps other workers away.
    worker = start_worker({**worker_env, "CELERY_BROKER_URL": private_redis.url}, concurrency=1)
    wait(worker.ready, timeout=60, what="the worker on the private Redis to answer ping")

    def submit(body: dict[str, Any]) -> str:
        response = api.post("/api/jobs/", body, format="json")
        assert response.status_code == 201, response.content
        return str(response.json()["id"])

    limited = job_done(
        submit(
            {
                "task": "tide.samples.flaky",
                "kwargs": {"failures": 3},
                "retry": {"max_retries": 1, "backoff": 0.05},
            }
        )
    )
    assert (limited.state, limited.retries) == (JobState.FAILED, 1)
    # The task's own policy again (5 retries): two failures, then success.
    plain = job_done(submit({"task": "tide.samples.flaky", "kwargs": {"failures": 2}}))
    assert (plain.state, plain.retries, plain.attempts) == (JobState.SUCCEEDED, 2, 3), plain.error
