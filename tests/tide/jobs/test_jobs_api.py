"""The jobs API on the real database, without workers: what it accepts, what it refuses
(and that a refusal leaves nothing behind), who sees what, and the 503 path when the
broker is down. Publishing happens after commit, so these tests run the on-commit
callbacks explicitly or use committed transactions."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)


def submit(api: APIClient, body: dict[str, Any], path: str = "/api/jobs/") -> Any:
    return api.post(path, body, format="json")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        # An unknown task name is refused, and the answer lists the names that exist.
        ({"task": "no.such.task"}, 400, "unknown_task"),
        # Celery's own tasks exist in the app but are not submittable.
        ({"task": "celery.backend_cleanup"}, 400, "unknown_task"),
        # A required argument missing: the signature does not bind.
        ({"task": "tide.samples.add", "args": [1]}, 400, "invalid_arguments"),
        # An argument of the wrong type is caught from the task's type hints.
        ({"task": "tide.samples.add", "args": [1, "two"]}, 400, "invalid_arguments"),
        # An argument the task does not take.
        ({"task": "tide.samples.io_bound", "kwargs": {"nope": 1}}, 400, "invalid_arguments"),
        # args must be a list, not an object.
        ({"task": "tide.samples.add", "args": {"x": 1}}, 400, "invalid"),
        # A queue no worker is configured for would strand the job.
        ({"task": "tide.samples.add", "args": [1, 2], "queue": "nowhere"}, 400, "invalid"),
        # Priorities run 0-9.
        ({"task": "tide.samples.add", "args": [1, 2], "priority": 10}, 400, "invalid"),
        # eta and countdown say the same thing twice.
        (
            {
                "task": "tide.samples.add",
                "args": [1, 2],
                "countdown": 5,
                "eta": "2030-01-01T00:00:00Z",
            },
            400,
            "invalid",
        ),
        # A negative countdown makes no sense.
        ({"task": "tide.samples.add", "args": [1, 2], "countdown": -1}, 400, "invalid"),
        # No task at all.
        ({}, 400, "invalid"),
    ],
)
def test_bad_submissions_are_refused_and_leave_nothing(
    api: APIClient, body: dict[str, Any], status: int, error: str
) -> None:
    response = submit(api, body)
    assert response.status_code == status, response.content
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert Job.objects.count() == 0


def test_unknown_task_lists_the_known_ones(api: APIClient) -> None:
    body = submit(api, {"task": "no.such.task"}).json()
    assert "tide.samples.add" in body["known_tasks"]
    assert all(not name.startswith("celery.") for name in body["known_tasks"])


def test_wrong_types_say_which_argument(api: APIClient) -> None:
    body = submit(api, {"task": "tide.samples.add", "args": [1, "two"]}).json()
    assert body["errors"][0]["loc"] == ["y"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        # A chord without its callback.
        ({"type": "chord", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]}, "callback"),
        # A chain with a callback (only chords have one).
        (
            {
                "type": "chain",
                "steps": [{"task": "tide.samples.add", "args": [1, 2]}],
                "callback": {"task": "tide.samples.total"},
            },
            "callback",
        ),
        # No steps.
        ({"type": "group", "steps": []}, "steps"),
        # An unknown workflow shape.
        ({"type": "pipeline", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]}, "type"),
        # A step that is not an object.
        ({"type": "group", "steps": ["tide.samples.add"]}, "steps"),
    ],
)
def test_malformed_workflows_are_refused(api: APIClient, body: dict[str, Any], why: str) -> None:
    response = submit(api, body, "/api/workflows/")
    assert response.status_code == 400, response.content
    assert why in str(response.json()["detail"])
    assert Job.objects.count() == 0


def test_workflow_step_with_unknown_task_leaves_nothing(api: APIClient) -> None:
    body = {
        "type": "chain",
        "steps": [{"task": "tide.samples.add", "args": [1, 2]}, {"task": "missing"}],
    }
    response = submit(api, body, "/api/workflows/")
    assert response.status_code == 400
    assert response.json()["error"] == "unknown_task"
    assert Job.objects.count() == 0


def test_chain_steps_after_the_first_receive_the_previous_result(api: APIClient) -> None:
    # multiply(x, y): the chain supplies x, so one argument is enough for step two...
    ok = {
        "type": "chain",
        "steps": [
            {"task": "tide.samples.add", "args": [1, 2]},
            {"task": "tide.samples.multiply", "args": [10]},
        ],
    }
    assert submit(api, ok, "/api/workflows/").status_code == 201
    # ...but an immutable step gets no previous result and needs both.
    bad = {
        "type": "chain",
        "steps": [
            {"task": "tide.samples.add", "args": [1, 2]},
            {"task": "tide.samples.multiply", "args": [10], "immutable": True},
        ],
    }
    assert submit(api, bad, "/api/workflows/").status_code == 400


@pytest.mark.parametrize(
    ("client_kwargs", "status"),
    [
        # No credentials at all.
        ({}, 401),
        # A token that does not exist.
        ({"HTTP_AUTHORIZATION": "Token 0000000000000000000000000000000000000000"}, 401),
        # The wrong scheme.
        ({"HTTP_AUTHORIZATION": "Bearer abc"}, 401),
    ],
)
def test_unauthenticated_requests_are_refused(client_kwargs: dict[str, str], status: int) -> None:
    client = APIClient()
    client.credentials(**client_kwargs)
    response = client.post(
        "/api/jobs/", {"task": "tide.samples.add", "args": [1, 2]}, format="json"
    )
    assert response.status_code == status
    assert response.json()["error"] in {"not_authenticated", "authentication_failed"}
    assert client.get("/api/jobs/").status_code == status
    assert Job.objects.count() == 0


def test_oversized_payload_is_413(api: APIClient) -> None:
    response = submit(api, {"task": "tide.samples.total", "args": [[1.0] * 100_000]})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert Job.objects.count() == 0


def test_malformed_json_is_400(api: APIClient) -> None:
    response = api.post("/api/jobs/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "parse_error"


def test_submit_records_the_job_and_publishes_it(api: APIClient) -> None:
    response = submit(
        api, {"task": "tide.samples.add", "args": [2, 3], "priority": 7, "countdown": 60}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == body["url"]
    job = Job.objects.get(id=body["id"])
    assert job.state == JobState.PENDING
    assert (job.task_name, job.args, job.queue, job.priority) == (
        "tide.samples.add",
        [2, 3],
        "default",
        7,
    )
    assert job.eta is not None


def test_routes_decide_the_default_queue(api: APIClient) -> None:
    body = submit(api, {"task": "tide.samples.io_bound", "args": [0.1]}).json()
    assert body["queue"] == "io"


def test_jobs_are_private_to_their_owner(api: APIClient, other_api: APIClient) -> None:
    job_id = submit(api, {"task": "tide.samples.add", "args": [1, 2]}).json()["id"]
    assert other_api.get(f"/api/jobs/{job_id}/").status_code == 404
    assert other_api.post(f"/api/jobs/{job_id}/cancel/").status_code == 404
    assert other_api.get("/api/jobs/").json()["results"] == []
    assert api.get(f"/api/jobs/{job_id}/").status_code == 200


def test_list_filters(api: APIClient) -> None:
    submit(api, {"task": "tide.samples.add", "args": [1, 2]})
    submit(api, {"task": "tide.samples.io_bound", "args": [0.1]})
    wf = {"type": "group", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]}
    submit(api, wf, "/api/workflows/")
    listing = api.get("/api/jobs/").json()["results"]
    # Workflow steps are listed inside their workflow, not on their own.
    assert len(listing) == 3
    assert [j["task_name"] for j in api.get("/api/jobs/?queue=io").json()["results"]] == [
        "tide.samples.io_bound"
    ]
    assert len(api.get("/api/jobs/?kind=group").json()["results"]) == 1
    assert len(api.get("/api/jobs/?state=pending").json()["results"]) == 3
    assert api.get("/api/jobs/?state=succeeded").json()["results"] == []
    bad = api.get("/api/jobs/?state=finished")
    assert bad.status_code == 400
    assert "pending" in bad.json()["detail"]["state"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        # An unknown kind is refused as an unknown state is, naming the kinds that exist.
        ("kind=bogus", "kind"),
        ("state=bogus", "state"),
        # A date that is not ISO 8601, and one that is well formed but impossible.
        ("created_after=yesterday", "created_after"),
        ("created_before=2030-13-45T00:00:00Z", "created_before"),
        # A NUL no name holds and PostgreSQL refuses in a query (schemathesis found a 500).
        ("queue=a%00b", "queue"),
        ("task=%00", "task"),
    ],
)
def test_bad_filters_are_400_naming_the_parameter(api: APIClient, query: str, param: str) -> None:
    response = api.get(f"/api/jobs/?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"
    assert param in response.json()["detail"]


@pytest.mark.parametrize(
    "cursor",
    [
        # Base64 of bytes that are not text.
        "//4=",
        # Base64 of a query string whose offset is not a number.
        "bz1hYmM=",
        # A well-formed cursor whose position is not a time (it would reach the database).
        "cD1ub3QtYS10aW1l",
    ],
)
def test_a_bad_cursor_is_400_not_404(api: APIClient, cursor: str) -> None:
    response = api.get("/api/jobs/", {"cursor": cursor})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_cursor"
    assert "next" in response.json()["detail"]["cursor"]


def test_date_range_filters(api: APIClient) -> None:
    from datetime import timedelta, timezone

    old = submit(api, {"task": "tide.samples.add", "args": [1, 2]}).json()["id"]
    new = submit(api, {"task": "tide.samples.add", "args": [3, 4]}).json()["id"]
    # Move the first job a day back, so the range has something to split.
    Job.objects.filter(id=old).update(
        created_at=Job.objects.get(id=new).created_at - timedelta(days=1)
    )
    boundary = (Job.objects.get(id=new).created_at - timedelta(hours=1)).isoformat()

    def ids(query: dict[str, str]) -> list[str]:
        response = api.get("/api/jobs/", query)
        assert response.status_code == 200, response.content
        return [j["id"] for j in response.json()["results"]]

    assert ids({"created_after": boundary}) == [new]
    assert ids({"created_before": boundary}) == [old]
    assert ids({"created_after": boundary, "created_before": boundary}) == []
    # A time without a zone reads as UTC; a date range composes with the other filters.
    naive = boundary.replace("+00:00", "")
    assert ids({"created_after": naive, "state": "pending"}) == [new]
    # An offset Python parses but PostgreSQL does not (beyond ±15:59) is the same instant
    # in UTC (schemathesis found a 500 here); the edges of the calendar are a 400.
    far = (Job.objects.get(id=new).created_at - timedelta(hours=1)).astimezone(
        timezone(timedelta(hours=19, minutes=18))
    )
    assert ids({"created_after": far.isoformat()}) == [new]
    assert api.get("/api/jobs/", {"created_after": "0001-01-01T00:00:00+23:00"}).status_code == 400


def test_workflow_steps_come_back_in_order_on_201(api: APIClient) -> None:
    steps = [{"task": "tide.samples.add", "args": [i, i]} for i in range(6)]
    body = submit(api, {"type": "group", "steps": steps}, "/api/workflows/").json()
    assert [s["position"] for s in body["steps"]] == list(range(6))
    # The same order as reading the job back.
    again = api.get(f"/api/jobs/{body['id']}/").json()
    assert [s["id"] for s in again["steps"]] == [s["id"] for s in body["steps"]]


def test_unknown_job_is_404(api: APIClient) -> None:
    response = api.get("/api/jobs/00000000-0000-0000-0000-000000000000/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert api.get("/api/jobs/not-a-uuid/").status_code == 404


def test_cancel_a_waiting_job(api: APIClient) -> None:
    job_id = submit(api, {"task": "tide.samples.add", "args": [1, 2], "countdown": 3600}).json()[
        "id"
    ]
    response = api.post(f"/api/jobs/{job_id}/cancel/", {}, format="json")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked"
    assert Job.objects.get(id=job_id).state == JobState.REVOKED


def test_tasks_and_queues_are_listed(api: APIClient) -> None:
    tasks = {t["name"]: t for t in api.get("/api/tasks/").json()}
    assert tasks["tide.samples.add"]["parameters"][0] == {
        "name": "x",
        "required": True,
        "type": "float",
    }
    assert tasks["tide.samples.cpu_bound"]["queue"] == "cpu"
    queues = {q["name"]: q for q in api.get("/api/queues/").json()}
    assert {"default", "cpu", "io"} <= set(queues)
    assert "tide.samples.io_bound" in queues["io"]["tasks"]


def test_queues_show_live_figures(api: APIClient) -> None:
    # Other tests of this session publish too: compare before and after.
    before = {q["name"]: q for q in api.get("/api/queues/").json()}
    for _ in range(3):
        submit(api, {"task": "tide.samples.cpu_bound", "args": [10]})
    submit(api, {"task": "tide.samples.add", "args": [1, 2], "priority": 9})
    queues = {q["name"]: q for q in api.get("/api/queues/").json()}
    # Nothing consumes here: every job waits, whatever its priority list.
    assert queues["cpu"]["waiting"] - before["cpu"]["waiting"] == 3
    assert queues["cpu"]["inflight"] == 0
    assert queues["default"]["waiting"] - before["default"]["waiting"] == 1
    assert queues["cpu"]["oldest_age_seconds"] >= 0
    assert queues["cpu"]["metrics_error"] is None


def test_queues_list_survives_a_broker_outage(api: APIClient, broker_down: None) -> None:
    response = api.get("/api/queues/")
    assert response.status_code == 200
    (default,) = [q for q in response.json() if q["name"] == "default"]
    assert default["waiting"] is None
    assert default["metrics_error"]


def test_broker_down_is_503_and_leaves_no_row(api: APIClient, broker_down: Any) -> None:
    response = submit(api, {"task": "tide.samples.add", "args": [1, 2]})
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    assert response["Retry-After"]
    assert Job.objects.count() == 0
    wf = {"type": "group", "steps": [{"task": "tide.samples.add", "args": [1, 2]}] * 3}
    assert submit(api, wf, "/api/workflows/").status_code == 503
    assert Job.objects.count() == 0


def test_schema_is_public_and_describes_the_api() -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {
        "/api/jobs/",
        "/api/jobs/{id}/",
        "/api/jobs/{id}/cancel/",
        "/api/workflows/",
        "/api/tasks/",
        "/api/queues/",
    } <= set(paths)


def test_fast_job_rendering_matches_drf(api: APIClient) -> None:
    from rest_framework import serializers
    from rest_framework.test import APIRequestFactory

    from tide.jobs.api.serializers import JobSerializer

    submit(api, {"task": "tide.samples.add", "args": [1, 2], "countdown": 30, "expires_in": 60})
    job = Job.objects.get()
    context = {"request": APIRequestFactory().get("/")}
    fast = JobSerializer(job, context=context).data
    drf = serializers.ModelSerializer.to_representation(JobSerializer(context=context), job)
    assert fast == dict(drf)


def keyed(api: APIClient, body: dict[str, Any], key: str, path: str = "/api/jobs/") -> Any:
    return api.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.parametrize(
    ("path", "body", "changed"),
    [
        # One task.
        (
            "/api/jobs/",
            {"task": "tide.samples.add", "args": [1, 2]},
            {"task": "tide.samples.add", "args": [1, 3]},
        ),
        # A workflow: the replay shows the same steps.
        (
            "/api/workflows/",
            {"type": "group", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]},
            {"type": "chain", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]},
        ),
    ],
)
def test_idempotency_key_makes_a_retry_safe(
    api: APIClient, other_api: APIClient, path: str, body: dict[str, Any], changed: dict[str, Any]
) -> None:
    first = keyed(api, body, "order-42", path)
    assert first.status_code == 201, first.content
    # The client retries (a timeout, a 503): the same job, 200, nothing new.
    again = keyed(api, body, "order-42", path)
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert again["Location"] == first["Location"]
    assert Job.objects.filter(parent__isnull=True).count() == 1
    # The same key with another request is a client bug: refused, nothing made.
    clash = keyed(api, changed, "order-42", path)
    assert clash.status_code == 422, clash.content
    assert clash.json()["error"] == "idempotency_key_reused"
    assert Job.objects.filter(parent__isnull=True).count() == 1
    # Keys are per user: another user's same key is their own submission.
    assert keyed(other_api, body, "order-42", path).status_code == 201
    # Without a key every request is a new job.
    assert api.post(path, body, format="json").status_code == 201
    assert Job.objects.filter(parent__isnull=True).count() == 3


@pytest.mark.parametrize("key", ["", "   ", "k" * 256])
def test_a_malformed_idempotency_key_is_400(api: APIClient, key: str) -> None:
    response = keyed(api, {"task": "tide.samples.add", "args": [1, 2]}, key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_a_refused_publish_can_be_retried_with_its_key(api: APIClient, broker_down: Any) -> None:
    body = {"task": "tide.samples.add", "args": [1, 2]}
    assert keyed(api, body, "retry-me").status_code == 503
    # Nothing was kept, so the key is free: once the broker is back the retry submits.
    assert Job.objects.count() == 0


def test_the_schema_documents_the_idempotency_key() -> None:
    from django.test import Client

    schema = Client().get("/api/schema/?format=json").json()
    for path in ("/api/jobs/", "/api/workflows/"):
        post = schema["paths"][path]["post"]
        assert any(p["name"] == "Idempotency-Key" for p in post["parameters"]), path
        assert {"200", "201", "422"} <= set(post["responses"]), path


def test_racing_retries_with_one_key_make_one_job(user_token: str) -> None:
    # Four copies of one request at once: the database's unique (owner, key) lets one
    # insert; the others answer 200 with that job.
    import threading

    from django.db import connection

    body = {"task": "tide.samples.add", "args": [1, 2]}
    start = threading.Barrier(4)
    answers: list[tuple[int, str]] = []

    def send() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {user_token}")
        start.wait()
        response = client.post("/api/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="race")
        answers.append((response.status_code, response.json()["id"]))
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(code for code, _ in answers) == [200, 200, 200, 201]
    assert len({job_id for _, job_id in answers}) == 1
    assert Job.objects.count() == 1
