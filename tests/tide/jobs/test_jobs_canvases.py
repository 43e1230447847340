"""Nested canvases (a chain of groups, a group of chains, a chord of chains) and
link/link_error callbacks: what the API takes and refuses, and, on real workers, that each
shape runs in order to the right results and that a failure settles the whole tree.

The worker tests are marked ``broker``: ``make test`` runs them on Redis and RabbitMQ.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)

S, F, R = JobState.SUCCEEDED, JobState.FAILED, JobState.REVOKED


def task(name: str, *args: Any, **extra: Any) -> dict[str, Any]:
    return {"task": f"tide.samples.{name}", "args": list(args), **extra}


def wf(kind: str, *steps: dict[str, Any], callback: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {"type": kind, "steps": list(steps)}
    if callback is not None:
        body["callback"] = callback
    return body


def post(api: APIClient, body: dict[str, Any], path: str = "/api/workflows/", **kw: Any) -> Any:
    return api.post(path, body, format="json", **kw)


def shape(step: dict[str, Any]) -> Any:
    """A step of the API's answer as (task or kind, nested shapes)."""
    if step["kind"] == "task":
        return step["task_name"].removeprefix("tide.samples.")
    return (step["kind"], [shape(s) for s in step["steps"]])


def tree(job: Job) -> Any:
    """(state, result) of a row and of every step below it, in position order."""
    if job.kind == "task":
        return (job.state, job.result)
    return (job.state, [tree(s) for s in job.workflow_steps])


# --- What the API takes and refuses (no worker) ------------------------------------------


def test_nested_steps_come_back_in_submission_order(api: APIClient) -> None:
    body = wf(
        "chain",
        task("add", 1, 2),
        wf("group", wf("chain", task("add", 1), task("multiply", 2)), task("add", 100)),
        task("total"),
    )
    response = post(api, body)
    assert response.status_code == 201, response.content
    steps = response.json()["steps"]
    assert [shape(s) for s in steps] == [
        "add",
        ("group", [("chain", ["add", "multiply"]), "add"]),
        "total",
    ]
    assert [s["position"] for s in steps] == [0, 1, 2]
    top = Job.objects.get(id=response.json()["id"])
    # Every workflow and task is a row under its workflow; only the top one is listed.
    assert Job.objects.filter(parent__isnull=True, id=top.id).count() == 1
    assert Job.objects.filter(owner=top.owner).count() == 8
    listed = api.get("/api/jobs/").json()["results"]
    assert [j["id"] for j in listed] == [str(top.id)]


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        # Four levels: a chain in a group in a chain in a group.
        (
            wf("group", wf("chain", wf("group", wf("chain", task("add", 1, 2))))),
            ["steps", 0, "steps", 0, "steps", 0, "type"],
            "at most 3 levels",
        ),
        # A nested workflow that is also a task.
        (
            wf("group", {"type": "chain", "steps": [task("add", 1, 2)], "task": "x"}),
            ["steps", 0, "task"],
            "type, steps and callback only",
        ),
        # A nested chord without its body, a nested chain with one.
        (
            wf("group", wf("chord", task("add", 1, 2))),
            ["steps", 0, "callback"],
            "A chord needs a callback",
        ),
        (
            wf("group", wf("chain", task("add", 1, 2), callback=task("total"))),
            ["steps", 0, "callback"],
            "A chord needs a callback",
        ),
        # A step with neither a task nor a shape.
        (wf("group", {"args": [1, 2]}), ["steps", 0, "task"], "Give a task"),
        # A misspelt field is refused, not ignored.
        (
            wf("chain", task("add", 1, 2, immutible=True)),
            ["steps", 0, "immutible"],
            "Unknown field",
        ),
        # Callbacks belong to task submissions: not to a workflow, nested or not, nor to
        # its steps (a chain's next step or a chord's callback says it).
        (
            {**wf("chain", task("add", 1, 2)), "link": [task("total")]},
            ["link"],
            "not by a workflow",
        ),
        (
            wf("group", {**wf("chain", task("add", 1, 2)), "link_error": [task("total")]}),
            ["steps", 0, "link"],
            "not by a workflow",
        ),
        (
            wf("group", wf("chain", task("add", 1, 2, link=[task("add", 1)]))),
            ["steps", 0, "steps", 0, "link"],
            "not by a workflow or its steps",
        ),
        (
            wf("chord", task("add", 1, 2), callback=task("total", link_error=[task("total")])),
            ["callback", "link"],
            "not by a workflow or its steps",
        ),
        # An empty nested workflow.
        (wf("group", wf("chain")), ["steps", 0, "steps", "non_field_errors"], "empty"),
    ],
)
def test_malformed_nesting_is_refused_with_where(
    api: APIClient, body: dict[str, Any], where: list[Any], says: str
) -> None:
    response = post(api, body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"
    detail: Any = response.json()["detail"]
    for key in where:  # DRF names a list's items by their index, as text
        detail = detail[str(key)]
    text = " ".join(detail) if isinstance(detail, list) else str(detail)
    assert says in text
    assert not Job.objects.exists()


def test_unknown_task_names_where_it_is(api: APIClient) -> None:
    response = post(api, wf("group", task("add", 1, 2), wf("chain", task("nope"))))
    assert response.status_code == 400, response.content
    answer = response.json()
    assert answer["error"] == "unknown_task"
    assert answer["loc"] == ["steps", 1, "steps", 0, "task"]
    assert "tide.samples.add" in answer["known_tasks"]
    body = task("add", 1, 2, link=[task("add", 1)], link_error=[task("nope")])
    response = post(api, body, "/api/jobs/")
    assert (response.status_code, response.json()["loc"]) == (400, ["link_error", 0, "task"])
    response = post(api, {"jobs": [task("add", 1, 2), body]}, "/api/jobs/bulk/")
    assert (response.status_code, response.json()["error"]) == (400, "unknown_task")
    assert not Job.objects.exists()


def test_callback_arguments_are_checked_with_the_result_first(api: APIClient) -> None:
    # multiply(x, y): the result is x, so one more argument fits and two do not.
    fits = post(api, task("add", 1, 2, link=[task("multiply", 10)]), "/api/jobs/")
    assert fits.status_code == 201, fits.content
    wrong = post(api, task("add", 1, 2, link=[task("multiply", 10, 20)]), "/api/jobs/")
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_arguments"
    assert wrong.json()["errors"][0]["loc"][:2] == ["link", 0]
    # A callback of a callback is not a thing Celery's link carries.
    nested = post(
        api, task("add", 1, 2, link=[task("add", 1, link=[task("add", 1)])]), "/api/jobs/"
    )
    assert nested.status_code == 400


def test_nested_arguments_are_checked_where_they_are(api: APIClient) -> None:
    # A chain's second step gets the first's result, also inside a nested group.
    body = wf("chain", task("add", 1, 2), wf("group", task("add", 1), task("add", 1, 2)))
    response = post(api, body)
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["loc"][:4] == ["steps", 1, "steps", 1]


@override_settings(TIDE_WORKFLOW_MAX_TASKS=5)
def test_the_task_bound_counts_nested_steps(api: APIClient) -> None:
    five = wf(
        "group",
        wf("chain", task("add", 1, 2), task("add", 1)),
        *[task("add", 1, 2)] * 3,
    )
    assert post(api, five).status_code == 201
    six = wf(
        "group",
        wf("chain", task("add", 1, 2), task("add", 1)),
        *[task("add", 1, 2)] * 4,
    )
    response = post(api, six)
    assert response.status_code == 400, response.content
    assert "TIDE_WORKFLOW_MAX_TASKS" in response.json()["errors"][0]["msg"]
    assert Job.objects.filter(parent__isnull=True).count() == 1


def test_an_idempotent_replay_returns_the_same_tree(api: APIClient) -> None:
    body = wf(
        "chord",
        wf("chain", task("add", 1, 2), task("multiply", 10)),
        task("add", 5, 5),
        callback=task("total"),
    )
    first = post(api, body, HTTP_IDEMPOTENCY_KEY="nested-1")
    again = post(api, body, HTTP_IDEMPOTENCY_KEY="nested-1")
    assert (first.status_code, again.status_code) == (201, 200)

    def ids(steps: list[dict[str, Any]]) -> list[Any]:
        return [
            (s["id"], ids(s.get("steps", [])), [c["id"] for c in s["callbacks"]]) for s in steps
        ]

    assert again.json()["id"] == first.json()["id"]
    assert ids(again.json()["steps"]) == ids(first.json()["steps"])
    assert Job.objects.count() == 6


def test_cancelling_a_nested_workflow_settles_the_whole_tree(api: APIClient) -> None:
    body = {
        **wf(
            "group",
            wf("chain", task("add", 1, 2), wf("group", task("add", 1), task("add", 2))),
            task("add", 1, 1),
        ),
        "countdown": 600,
    }
    job_id = post(api, body).json()["id"]
    answer = api.post(f"/api/jobs/{job_id}/cancel/", {}, format="json")
    assert answer.status_code == 200, answer.content
    top = Job.objects.get(id=job_id)
    assert tree(top) == (R, [(R, [(R, None), (R, [(R, None), (R, None)])]), (R, None)])
    assert answer.json()["state"] == "revoked"


def test_cancelling_a_waiting_task_settles_its_callbacks(api: APIClient) -> None:
    body = task("add", 1, 2, countdown=600, link=[task("add", 1)], link_error=[task("add", 1)])
    job_id = post(api, body, "/api/jobs/").json()["id"]
    answer = api.post(f"/api/jobs/{job_id}/cancel/", {}, format="json")
    assert answer.status_code == 200, answer.content
    assert [(c["trigger"], c["state"], c["error"]) for c in answer.json()["callbacks"]] == [
        ("link", "revoked", "not run: the task revoked"),
        ("link_error", "revoked", "not run: the task revoked"),
    ]


# --- On real workers ---------------------------------------------------------------------


@pytest.fixture
def worker(celery_worker: Any) -> Any:
    return celery_worker


def run(api: APIClient, job_done: Any, body: dict[str, Any], path: str = "/api/workflows/") -> Job:
    response = post(api, body, path)
    assert response.status_code == 201, response.content
    return job_done(response.json()["id"])


def started_order(job: Job) -> list[Any]:
    """The tasks under ``job`` by the time they started."""
    rows = [job]
    tasks: list[Job] = []
    while rows:
        row = rows.pop()
        if row.kind == "task":
            tasks.append(row)
        rows.extend(row.workflow_steps)
    return [
        (t.task_name.removeprefix("tide.samples."), t.args)
        for t in sorted(tasks, key=lambda t: t.started_at)
    ]


@pytest.mark.broker
def test_a_chain_with_a_group_in_it(api: APIClient, job_done: Any, worker: Any) -> None:
    # chain(add(1, 2), group(add(·, 10), multiply(·, 10)), total): 3 -> [13, 30] -> 43
    body = wf(
        "chain",
        task("add", 1, 2),
        wf("group", task("add", 10), task("multiply", 10)),
        task("total"),
    )
    job = run(api, job_done, body)
    assert (job.result, job.progress) == (43, 100.0)
    assert tree(job) == (S, [(S, 3), (S, [(S, 13), (S, 30)]), (S, 43)])
    order = started_order(job)
    assert order[0] == ("add", [1, 2])
    assert order[-1] == ("total", [])


@pytest.mark.broker
def test_a_group_of_chains(api: APIClient, job_done: Any, worker: Any) -> None:
    body = wf(
        "group",
        wf("chain", task("add", 1, 2), task("multiply", 10)),
        wf("chain", task("add", 3, 4), task("multiply", 2)),
    )
    job = run(api, job_done, body)
    assert job.result == [30, 14]
    assert tree(job) == (S, [(S, [(S, 3), (S, 30)]), (S, [(S, 7), (S, 14)])])


@pytest.mark.broker
def test_a_chord_whose_header_holds_a_chain(api: APIClient, job_done: Any, worker: Any) -> None:
    body = wf(
        "chord",
        wf("chain", task("add", 1, 2), task("multiply", 10)),
        task("add", 5, 5),
        callback=task("total"),
    )
    job = run(api, job_done, body)
    assert job.result == 40
    assert tree(job) == (S, [(S, [(S, 3), (S, 30)]), (S, 10), (S, 40)])
    # The body's 40 needs every header result; and it started after every header task
    # (it may start before the last one's row says finished: Celery's chord counter
    # publishes the body before the task's own on_success hook runs).
    order = started_order(job)
    assert order[-1] == ("total", [])
    assert order.index(("multiply", [10])) > order.index(("add", [1, 2]))


@pytest.mark.broker
def test_three_levels(api: APIClient, job_done: Any, worker: Any) -> None:
    # chain(add(1, 1), group(chain(add(·, 1), multiply(·, 2)), add(·, 100)), total)
    body = wf(
        "chain",
        task("add", 1, 1),
        wf("group", wf("chain", task("add", 1), task("multiply", 2)), task("add", 100)),
        task("total"),
    )
    job = run(api, job_done, body)
    assert tree(job) == (
        S,
        [(S, 2), (S, [(S, [(S, 3), (S, 6)]), (S, 102)]), (S, 108)],
    )


@pytest.mark.broker
def test_a_failed_group_member_stops_the_chain(api: APIClient, job_done: Any, worker: Any) -> None:
    body = wf(
        "chain",
        task("add", 1, 2),
        wf("group", task("fail", "member broke", immutable=True), task("add", 1)),
        task("total"),
    )
    job = run(api, job_done, body)
    assert (job.state, job.error) == (F, "ValueError: member broke")
    assert tree(job) == (F, [(S, 3), (F, [(F, None), (S, 4)]), (R, None)])
    assert job.workflow_steps[-1].error == "skipped: step 1 failed"
    assert job.workflow_steps[-1].started_at is None


@pytest.mark.broker
def test_a_failed_header_chain_skips_the_chord_body(
    api: APIClient, job_done: Any, worker: Any
) -> None:
    body = wf(
        "chord",
        wf("chain", task("fail", "header broke", immutable=True), task("add", 1)),
        task("add", 1, 1),
        callback=task("total"),
    )
    job = run(api, job_done, body)
    assert tree(job) == (F, [(F, [(F, None), (R, None)]), (S, 2), (R, None)])
    assert all(row.started_at is None for row in Job.objects.filter(state=R))


@pytest.mark.broker
def test_link_runs_with_the_result_and_link_error_is_settled(
    api: APIClient, job_done: Any, wait: Any, worker: Any
) -> None:
    body = task(
        "add",
        2,
        3,
        link=[task("multiply", 10), task("add", 1, 1, immutable=True)],
        link_error=[task("note_failure")],
    )
    job = run(api, job_done, body, "/api/jobs/")
    assert (job.state, job.result) == (S, 5)
    callbacks = {(c.trigger, c.task_name.removeprefix("tide.samples.")): c for c in job.callbacks}
    done = [job_done(c.id) for c in job.callbacks]
    assert [(c.trigger, c.state, c.result) for c in done] == [
        ("link", S, 50),
        ("link", S, 2),
        ("link_error", R, None),
    ]
    assert callbacks[("link_error", "note_failure")].started_at is None
    detail = api.get(f"/api/jobs/{job.id}/").json()
    assert [(c["trigger"], c["state"]) for c in detail["callbacks"]] == [
        ("link", "succeeded"),
        ("link", "succeeded"),
        ("link_error", "revoked"),
    ]
    # Callbacks are rows of their task, not jobs of their own in the listing.
    assert [j["id"] for j in api.get("/api/jobs/").json()["results"]] == [str(job.id)]


@pytest.mark.broker
def test_link_error_runs_with_the_failed_task_id(
    api: APIClient, job_done: Any, worker: Any
) -> None:
    body = task("fail", "boom", link=[task("add", 1)], link_error=[task("note_failure")])
    job = run(api, job_done, body, "/api/jobs/")
    assert job.state == F
    link, link_error = (job_done(c.id) for c in job.callbacks)
    assert (link.state, link.error) == (R, "not run: the task failed")
    assert (link_error.state, link_error.result) == (S, f"handled {job.id}")


@pytest.mark.broker
def test_bulk_jobs_take_callbacks(api: APIClient, job_done: Any, worker: Any) -> None:
    body = {
        "jobs": [
            task("add", 1, 2, link=[task("multiply", 100)]),
            task("fail", "broke", link_error=[task("note_failure", kwargs={"note": "caught"})]),
        ]
    }
    response = post(api, body, "/api/jobs/bulk/")
    assert response.status_code == 201, response.content
    first, second = (job_done(j["id"]) for j in response.json()["jobs"])
    (link,) = first.callbacks
    (errback,) = second.callbacks
    assert (job_done(link.id).result, job_done(errback.id).result) == (300, f"caught {second.id}")


@pytest.mark.broker
def test_a_nested_workflow_reruns_as_the_same_tree(
    api: APIClient, job_done: Any, worker: Any
) -> None:
    body = wf("group", wf("chain", task("add", 1, 2), task("multiply", 10)), task("add", 1, 1))
    first = run(api, job_done, body)
    response = api.post(f"/api/jobs/{first.id}/rerun/", format="json")
    assert response.status_code == 201, response.content
    again = job_done(response.json()["id"])
    assert tree(again) == tree(first) == (S, [(S, [(S, 3), (S, 30)]), (S, 2)])
