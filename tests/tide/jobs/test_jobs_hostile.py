"""Hostile input is a 4xx with a reason, always (issue 12, item 5): documents nested too
deep, NUL characters and lone surrogates, NaN, a NUL in any query parameter, unknown or
read-only fields, values of the wrong JSON type (nothing is converted), arguments that a
lenient check would coerce, page sizes out of range; and a chunked body read through the
real server (gunicorn, as ``tide api`` runs it) from a raw socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tide.jobs.accounts import ensure_token
from tide.jobs.models import Job
from tide.local.environment import free_port

VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.django_db(transaction=True)


def post_raw(api: APIClient, text: str, path: str = "/api/jobs/") -> Any:
    return api.post(path, data=text, content_type="application/json")


def nested(depth: int) -> str:
    return '{"task": "tide.samples.total", "args": [' + "[" * depth + "]" * depth + "]}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # ~1,000 deep made a RecursionError and an HTML 500; 100,000 deep is refused
        # before Python's decoder recurses at all.
        (nested(1000), "nested deeper than 64"),
        (nested(100_000), "nested deeper than 64"),
        # A NUL or a lone surrogate in args, kwargs or a key: PostgreSQL cannot store it.
        ('{"task": "tide.samples.fail", "args": ["a\\u0000b"]}', "/args/0 contains a NUL"),
        ('{"task": "tide.samples.fail", "kwargs": {"message": "\\ud800"}}', "lone surrogate"),
        ('{"task": "tide.samples.fail", "kwargs": {"\\udfff": "x"}}', "lone surrogate"),
        ('{"task": "tide.samples.fail\\u0000"}', "/task contains a NUL"),
        # NaN and Infinity are Python's, not JSON's.
        ('{"task": "tide.samples.add", "args": [NaN, 1]}', "NaN is not JSON"),
        # Bytes that are not UTF-8.
        (b'{"task": "\xff"}', "not valid utf-8"),
    ],
)
def test_hostile_documents_are_400_naming_the_reason(
    api: APIClient, text: str | bytes, reason: str
) -> None:
    response = api.post("/api/jobs/", data=text, content_type="application/json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "parse_error"
    assert reason in body["detail"]
    assert Job.objects.count() == 0


def test_a_document_64_deep_is_still_read(api: APIClient) -> None:
    # The bound leaves room for real arguments: 62 levels of lists inside args.
    response = post_raw(api, nested(62))
    assert response.status_code == 400, response.content
    # Read and checked against the task's types (a list of numbers), not refused as JSON.
    assert response.json()["error"] == "invalid_arguments"


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/?queue=a%00b",
        "/api/jobs/?task=%00",
        "/api/jobs/?kind=%00",
        "/api/jobs/?state=chain%00",
        "/api/jobs/?periodic_task=x%00",
        "/api/jobs/?cursor=%00",
        "/api/jobs/?page_size=%00",
        "/api/jobs/?%00=1",
        "/api/periodic-tasks/?page_size=1%00",
        "/api/queues/?x=%00",
    ],
)
def test_a_nul_in_any_query_parameter_is_400(api: APIClient, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"


@pytest.mark.parametrize("value", ["null", "0", "-1", "501", "1.5", "ten", ""])
def test_page_size_out_of_range_is_400(api: APIClient, value: str) -> None:
    for path in ("/api/jobs/", "/api/periodic-tasks/"):
        response = api.get(f"{path}?page_size={value}")
        assert response.status_code == 400, (path, response.content)
        assert "page_size" in response.json()["detail"]


def test_page_size_in_range_pages(api: APIClient) -> None:
    for _ in range(3):
        submitted = api.post(
            "/api/jobs/", {"task": "tide.samples.add", "args": [1, 2]}, format="json"
        )
        assert submitted.status_code == 201
    body = api.get("/api/jobs/?page_size=2").json()
    assert len(body["results"]) == 2
    assert body["next"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/jobs/", {"task": "tide.samples.add", "args": [1, 2], "prio": 5}, "prio"),
        ("/api/jobs/", {"task": "tide.samples.add", "args": [1, 2], "id": "x"}, "id"),
        (
            "/api/jobs/",
            {"task": "tide.samples.add", "args": [1, 2], "retry": {"max_retries": 1, "n": 2}},
            "n",
        ),
        ("/api/jobs/bulk/", {"jobs": [{"task": "tide.samples.add", "arg": [1, 2]}]}, "arg"),
        ("/api/jobs/bulk/", {"jobs": [], "extra": 1}, "extra"),
        (
            "/api/workflows/",
            {"type": "chain", "steps": [{"task": "tide.samples.add", "args": [1, 2], "x": 1}]},
            "x",
        ),
        (
            "/api/periodic-tasks/",
            {"name": "n", "task": "tide.samples.add", "schedule": {"every": 5, "cron": "x"}},
            "cron",
        ),
        (
            "/api/periodic-tasks/",
            {"name": "n", "task": "tide.samples.add", "schedule": {"every": 5}, "one_off": True},
            "one_off",
        ),
    ],
)
def test_unknown_and_read_only_fields_are_refused_by_name(
    api: APIClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert field in json.dumps(response.json()["detail"])
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # Callbacks and nested workflows are taken as strictly as the rest.
        (
            "/api/jobs/",
            {"task": "tide.samples.add", "args": [1, 2], "link": [{"task": "x", "kw": {}}]},
            "kw",
        ),
        (
            "/api/jobs/",
            {
                "task": "tide.samples.add",
                "args": [1, 2],
                "link": [{"task": "tide.samples.add", "args": [1], "immutable": 0}],
            },
            "immutable",
        ),
        (
            "/api/workflows/",
            {
                "type": "chain",
                "steps": [
                    {"type": "group", "steps": [{"task": "tide.samples.add", "args": [1, 2]}]},
                    {"task": "tide.samples.add", "args": [1], "queue": 3},
                ],
            },
            "queue",
        ),
        (
            "/api/workflows/",
            {"type": "chain", "steps": [{"type": 1, "steps": [{"task": "tide.samples.add"}]}]},
            "type",
        ),
    ],
)
def test_callbacks_and_nested_steps_are_strict_too(
    api: APIClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert field in json.dumps(response.json()["detail"])
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "tide.samples.add", "args": [1, 2], "priority": "5"}, "priority"),
        ({"task": "tide.samples.add", "args": [1, 2], "priority": 5.0}, "priority"),
        ({"task": "tide.samples.add", "args": [1, 2], "countdown": "10"}, "countdown"),
        ({"task": "tide.samples.add", "args": [1, 2], "countdown": True}, "countdown"),
        ({"task": "tide.samples.add", "args": [1, 2], "queue": 1}, "queue"),
        ({"task": 5}, "task"),
        (
            {"task": "tide.samples.add", "args": [1, 2], "retry": {"jitter": "yes"}},
            "jitter",
        ),
    ],
)
def test_values_of_the_wrong_json_type_are_not_converted(
    api: APIClient, body: dict[str, Any], field: str
) -> None:
    response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in json.dumps(response.json()["detail"])
    assert "nothing is converted" in json.dumps(response.json()["detail"])


@pytest.mark.parametrize("terminate", [0, 1, "true", None])
def test_cancel_takes_a_boolean_only(api: APIClient, terminate: Any) -> None:
    job = api.post(
        "/api/jobs/", {"task": "tide.samples.add", "args": [1, 2], "countdown": 60}, format="json"
    )
    response = api.post(
        f"/api/jobs/{job.json()['id']}/cancel/", {"terminate": terminate}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "terminate" in response.json()["detail"]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        # A lenient check read these as numbers, and the task then added two strings ("12").
        (["1", "2"], {}),
        ([1, True], {}),
        ([], {"x": 1, "y": "2"}),
    ],
)
def test_arguments_are_checked_as_the_task_receives_them(
    api: APIClient, args: list[Any], kwargs: dict[str, Any]
) -> None:
    response = api.post(
        "/api/jobs/", {"task": "tide.samples.add", "args": args, "kwargs": kwargs}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_arguments"
    assert Job.objects.count() == 0


def test_arguments_of_the_declared_types_are_accepted(api: APIClient) -> None:
    # A float parameter takes a JSON integer (JSON has one number type); a list of floats
    # takes integers and decimals.
    assert (
        api.post(
            "/api/jobs/", {"task": "tide.samples.add", "args": [1, 2.5]}, format="json"
        ).status_code
        == 201
    )
    assert (
        api.post(
            "/api/jobs/", {"task": "tide.samples.total", "args": [[1, 2.5]]}, format="json"
        ).status_code
        == 201
    )


@pytest.mark.parametrize("eta", ["9999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "+31 days"])
def test_an_eta_beyond_30_days_is_refused_like_countdown(api: APIClient, eta: str) -> None:
    if eta.startswith("+"):
        eta = (timezone.now() + timedelta(days=31)).isoformat()
    for path, body in (
        ("/api/jobs/", {"task": "tide.samples.add", "args": [1, 2], "eta": eta}),
        (
            "/api/workflows/",
            {"type": "chain", "steps": [{"task": "tide.samples.add", "args": [1, 2]}], "eta": eta},
        ),
    ):
        response = api.post(path, body, format="json")
        assert response.status_code == 400, response.content
        assert "30 days" in json.dumps(response.json()["detail"]["eta"])
    assert Job.objects.count() == 0


def test_an_eta_within_30_days_or_past_is_accepted(api: APIClient) -> None:
    for eta in (timezone.now() + timedelta(days=29), timezone.now() - timedelta(days=400)):
        body = {"task": "tide.samples.add", "args": [1, 2], "eta": eta.isoformat()}
        assert api.post("/api/jobs/", body, format="json").status_code == 201


def test_sample_tasks_are_opt_in(api: APIClient, settings: Any) -> None:
    settings.TIDE_SAMPLE_TASKS = False
    for task in ("tide.samples.notify_shipping", "tide.samples.cpu_bound"):
        response = api.post("/api/jobs/", {"task": task, "args": []}, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["error"] == "unknown_task"
    assert not [t for t in api.get("/api/tasks/").json() if t["name"].startswith("tide.samples.")]
    settings.TIDE_SAMPLE_TASKS = True
    assert (
        api.post(
            "/api/jobs/", {"task": "tide.samples.cpu_bound", "args": [1]}, format="json"
        ).status_code
        == 201
    )


@pytest.mark.parametrize(
    "path", ["/api/jobs/?stat=pending", "/api/jobs/?=0", "/api/periodic-tasks/?name=x"]
)
def test_an_unknown_query_parameter_of_a_listing_is_400(api: APIClient, path: str) -> None:
    # Listing everything would answer a question that was not asked.
    response = api.get(path)
    assert response.status_code == 400, response.content
    assert "Unknown query parameter" in json.dumps(response.json()["detail"])


def test_an_empty_cursor_is_the_first_page_and_an_empty_state_is_400(api: APIClient) -> None:
    assert api.get("/api/jobs/?cursor=").status_code == 200
    assert api.get("/api/periodic-tasks/?cursor=").status_code == 200
    assert api.get("/api/jobs/?state=").status_code == 400
    assert api.get("/api/jobs/?created_after=").status_code == 400


def test_a_path_no_route_matches_is_a_json_404(api: APIClient) -> None:
    response = api.get("/api/jobs/0.5/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("key", ["caf\u00e9", "a\tb", "x" * 256])
def test_an_idempotency_key_is_printable_ascii(api: APIClient, key: str) -> None:
    key = key.encode().decode("unicode_escape")
    response = api.post(
        "/api/jobs/",
        {"task": "tide.samples.add", "args": [1, 2]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert response.status_code == 400, response.content
    assert "Idempotency-Key" in response.json()["detail"]


def test_a_bulk_key_leaves_room_for_every_index(api: APIClient, settings: Any) -> None:
    # The same bound whatever the number of jobs, as the schema states it.
    room = 255 - 1 - len(str(settings.TIDE_BULK_MAX_JOBS - 1))
    body = {"jobs": [{"task": "tide.samples.add", "args": [1, 2]}]}
    too_long = api.post(
        "/api/jobs/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="k" * (room + 1)
    )
    assert too_long.status_code == 400, too_long.content
    fits = api.post("/api/jobs/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="k" * room)
    assert fits.status_code == 201, fits.content


def test_a_null_argument_reaches_the_task_check(api: APIClient) -> None:
    # null is JSON: refused by the task's types (add takes numbers), not as a field error.
    response = api.post(
        "/api/jobs/", {"task": "tide.samples.add", "args": [None, 1]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_arguments"


@pytest.mark.parametrize(
    "schedule",
    [
        # every is a 32-bit column in django-celery-beat: 2**31 was a 500.
        {"every": 2**31},
        # Within the column, but no timedelta holds it: beat would fail on every tick.
        {"every": 2**31 - 1, "period": "days"},
    ],
)
def test_an_interval_beyond_what_beat_can_hold_is_400(
    api: APIClient, schedule: dict[str, Any]
) -> None:
    body = {"name": "n", "task": "tide.samples.add", "args": [1, 2], "schedule": schedule}
    response = api.post("/api/periodic-tasks/", body, format="json")
    assert response.status_code == 400, response.content
    assert "every" in json.dumps(response.json()["detail"])


def test_the_schema_documents_every_refusal(api: APIClient) -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    submit = schema["paths"]["/api/jobs/"]["post"]["responses"]
    assert {"400", "401", "413", "415", "422", "503"} <= set(submit)
    assert submit["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "404" in schema["paths"]["/api/jobs/{id}/cancel/"]["post"]["responses"]
    request = schema["components"]["schemas"]["SubmitTaskRequest"]
    assert request["additionalProperties"] is False
    assert "default" in request["properties"]["queue"]["enum"]
    assert "tide.samples.add" in request["properties"]["task"]["enum"]
    workflow = schema["components"]["schemas"]["SubmitWorkflowRequest"]
    assert workflow["properties"]["steps"]["minItems"] == 1
    page_size = next(
        p for p in schema["paths"]["/api/jobs/"]["get"]["parameters"] if p["name"] == "page_size"
    )
    assert (page_size["schema"]["minimum"], page_size["schema"]["maximum"]) == (1, 500)


# --- The real server ---------------------------------------------------------------


@pytest.fixture
def api_server(worker_env: dict[str, str], tmp_path: Path, wait: Any) -> Iterator[int]:
    """``tide api``'s gunicorn (gthread, as shipped) on the test database; its port."""
    port = int(os.environ.get("TIDE_TEST_API_PORT") or free_port())
    log = tmp_path / "gunicorn.log"
    env = {
        **worker_env,
        "TIDE_API_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "2",
    }
    process = subprocess.Popen(
        [
            str(VENV_BIN / "gunicorn"),
            "tide.wsgi:application",
            "--config",
            "python:tide.gunicorn_conf",
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited: {log.read_text()[-3000:]}")
        try:
            return b"200" in raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[:20]
        except OSError:
            return False

    try:
        wait(answers, timeout=120, what="gunicorn to answer /healthz")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def chunked_post(port: int, token: str, body: bytes, chunk: int = 7) -> tuple[int, bytes]:
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    head = (
        "POST /api/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = raw_request(port, head + encoded)
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        decoded = b""
        while True:
            size, _, body = body.partition(b"\r\n")
            if not int(size, 16):
                break
            decoded, body = decoded + body[: int(size, 16)], body[int(size, 16) + 2 :]
        body = decoded
    return int(head.split()[1]), body


def test_a_chunked_body_is_read_by_the_real_server(api_server: int) -> None:
    token = ensure_token("chunky")
    body = json.dumps({"task": "tide.samples.add", "args": [40, 2], "countdown": 600}).encode()
    status, answer = chunked_post(api_server, token, body)
    # Read as empty before: a 400 saying "task: This field is required."
    assert status == 201, answer
    job = Job.objects.get(id=json.loads(answer)["id"])
    assert (job.task_name, job.args) == ("tide.samples.add", [40, 2])


def test_a_chunked_body_past_the_limit_is_413(api_server: int, settings: Any) -> None:
    token = ensure_token("chunky")
    big = json.dumps(
        {"task": "tide.samples.total", "args": [[1.0] * (settings.TIDE_MAX_REQUEST_BYTES // 4)]}
    ).encode()
    status, answer = chunked_post(api_server, token, big, chunk=65536)
    assert status == 413, answer
    assert json.loads(answer)["error"] == "payload_too_large"
    assert Job.objects.count() == 0


def test_hostile_json_through_the_real_server_is_a_json_400(api_server: int) -> None:
    token = ensure_token("chunky")
    status, answer = chunked_post(api_server, token, nested(5000).encode(), chunk=4096)
    assert status == 400, answer
    assert json.loads(answer)["error"] == "parse_error"
