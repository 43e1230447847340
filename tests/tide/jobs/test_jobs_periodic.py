"""Periodic tasks users make, change, pause and delete while beat runs: the API and the
admin on django-celery-beat's store, and a real beat (DatabaseScheduler) with a real
worker running them, each run a job owned by whoever made the periodic task."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import clear_url_caches
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState, PeriodicTaskOwner

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/periodic-tasks/"
EVERY_MINUTE = {"task": "tide.samples.add", "args": [1, 2], "schedule": {"every": 60}}


def make(api: APIClient, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(PATH, body, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_create_every_crontab_and_once(api: APIClient) -> None:
    every = make(api, {**EVERY_MINUTE, "name": "every", "priority": 9, "queue": "cpu"})
    assert every["schedule"] == {"every": 60, "period": "seconds"}
    assert (every["enabled"], every["one_off"], every["priority"], every["queue"]) == (
        True,
        False,
        9,
        "cpu",
    )
    cron = make(
        api,
        {
            **EVERY_MINUTE,
            "name": "nightly",
            "schedule": {"crontab": "30 3 * * 1-5", "timezone": "Europe/Paris"},
        },
    )
    assert cron["schedule"] == {"crontab": "30 3 * * 1-5", "timezone": "Europe/Paris"}
    once = make(api, {**EVERY_MINUTE, "name": "once", "schedule": {"at": "2030-01-01T00:00:00Z"}})
    assert (once["schedule"], once["one_off"]) == ({"at": "2030-01-01T00:00:00Z"}, True)
    # django-celery-beat's own rows, as its scheduler and admin read them.
    stored = PeriodicTask.objects.get(name="nightly")
    assert (stored.task, stored.args, stored.crontab.hour, str(stored.crontab.timezone)) == (
        "tide.samples.add",
        "[1, 2]",
        "3",
        "Europe/Paris",
    )
    assert PeriodicTaskOwner.objects.count() == 3
    assert api.get(PATH).json()["results"][0]["name"] == "every"


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        # A task nobody registered: beat would send it to no one.
        ({"task": "no.such.task"}, "unknown_task", None),
        # Arguments that do not fit: every run would fail.
        ({"args": [1, "two"]}, "invalid_arguments", None),
        # Two schedules at once, or none.
        ({"schedule": {"every": 5, "crontab": "* * * * *"}}, "invalid", "schedule"),
        ({"schedule": {}}, "invalid", "schedule"),
        # A crontab with four fields, or a minute that does not exist.
        ({"schedule": {"crontab": "* * * *"}}, "invalid", "crontab"),
        ({"schedule": {"crontab": "61 * * * *"}}, "invalid", "crontab"),
        # A time zone that does not exist.
        ({"schedule": {"crontab": "0 0 * * *", "timezone": "Mars/Olympus"}}, "invalid", "timezone"),
        # Every zero seconds.
        ({"schedule": {"every": 0}}, "invalid", "every"),
        # A queue no worker consumes.
        ({"queue": "nowhere"}, "invalid", "queue"),
        # No name.
        ({"name": ""}, "invalid", "name"),
    ],
)
def test_bad_periodic_tasks_are_400_and_leave_nothing(
    api: APIClient, body: dict[str, Any], error: str, field: str | None
) -> None:
    response = api.post(PATH, {**EVERY_MINUTE, "name": "bad", **body}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == error
    if field:
        assert field in str(response.json()["detail"])
    assert not PeriodicTask.objects.filter(name="bad").exists()


def test_names_are_unique(api: APIClient) -> None:
    make(api, {**EVERY_MINUTE, "name": "report"})
    again = api.post(PATH, {**EVERY_MINUTE, "name": "report"}, format="json")
    assert again.status_code == 400
    assert "name" in again.json()["detail"]


def test_change_pause_and_delete(api: APIClient) -> None:
    made = make(api, {**EVERY_MINUTE, "name": "report"})
    url = f"{PATH}{made['id']}/"
    paused = api.patch(url, {"enabled": False}, format="json")
    assert (paused.status_code, paused.json()["enabled"]) == (200, False)
    assert PeriodicTask.objects.get(name="report").enabled is False
    # New arguments alone are checked against the stored task.
    assert api.patch(url, {"args": [1, "x"]}, format="json").status_code == 400
    changed = api.patch(
        url, {"args": [5, 5], "schedule": {"every": 2, "period": "hours"}}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["args"], changed.json()["schedule"]) == (
        [5, 5],
        {"every": 2, "period": "hours"},
    )
    assert changed.json()["enabled"] is False  # a change is not a resume
    assert api.delete(url).status_code == 204
    assert not PeriodicTask.objects.filter(name="report").exists()
    assert api.get(url).status_code == 404


def test_periodic_tasks_are_private(api: APIClient, other_api: APIClient) -> None:
    made = make(api, {**EVERY_MINUTE, "name": "mine"})
    url = f"{PATH}{made['id']}/"
    assert other_api.get(url).status_code == 404
    assert other_api.patch(url, {"enabled": False}, format="json").status_code == 404
    assert other_api.delete(url).status_code == 404
    assert other_api.get(PATH).json()["results"] == []
    assert PeriodicTask.objects.get(name="mine").enabled is True


@pytest.fixture
def admin_client(settings: Any, tmp_path: Path) -> Iterator[Client]:
    """A logged-in superuser on the URL map local mode builds (the admin routed)."""
    import tide.urls
    from tide.jobs.accounts import ensure_admin_login

    settings.TIDE_ADMIN_ENABLED = True
    importlib.reload(tide.urls)
    clear_url_caches()
    client = Client()
    assert client.login(
        username="admin", password=ensure_admin_login("admin", tmp_path / "password")
    )
    yield client
    settings.TIDE_ADMIN_ENABLED = False
    importlib.reload(tide.urls)
    clear_url_caches()


def test_the_admin_lists_and_pauses_them(api: APIClient, admin_client: Client) -> None:
    made = make(api, {**EVERY_MINUTE, "name": "from-the-api"})
    page = admin_client.get("/admin/django_celery_beat/periodictask/")
    assert page.status_code == 200
    assert "from-the-api" in page.content.decode()
    form = admin_client.get(f"/admin/django_celery_beat/periodictask/{made['id']}/change/")
    assert form.status_code == 200
    # django-celery-beat's own admin action pauses it, and the API shows the change.
    paused = admin_client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "disable_tasks", "_selected_action": [made["id"]]},
    )
    assert paused.status_code == 302
    assert api.get(f"{PATH}{made['id']}/").json()["enabled"] is False


@pytest.fixture
def beat(
    worker_env: dict[str, str], tmp_path: Path, wait: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery beat`` on the test database, with the scheduler the product ships."""
    log = tmp_path / "beat.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "tide", "beat", "--loglevel", "INFO"],
        env=worker_env,
        cwd=tmp_path,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def started() -> bool:
        if process.poll() is not None:
            pytest.fail(f"beat exited: {log.read_text()[-3000:]}")
        # The DatabaseScheduler writes the built-in entries into its store at start.
        return PeriodicTask.objects.filter(name="purge-expired-jobs").exists()

    wait(started, timeout=180, what="beat to install the built-in purge schedule")
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def runs(name: str, result: Any = None) -> Callable[[], list[Job]]:
    def probe() -> list[Job]:
        jobs = Job.objects.filter(periodic_task=name, state=JobState.SUCCEEDED)
        if result is not None:
            jobs = jobs.filter(result=result)
        return list(jobs)

    return probe


@pytest.mark.broker
def test_beat_runs_changes_pauses_and_stops_them_at_run_time(
    api: APIClient, celery_worker: Any, beat: Any, wait: Any
) -> None:
    made = make(api, {"name": "tick", "task": "tide.samples.add", "args": [2, 3],
                      "schedule": {"every": 1}})  # fmt: skip
    url = f"{PATH}{made['id']}/"
    done = wait(lambda: len(runs("tick")()) >= 2 and runs("tick")(), timeout=120, what="2 runs")
    # Each run is a job of whoever made the periodic task, with its result.
    assert {(job.owner.username, job.task_name, job.result) for job in done} == {
        ("alice", "tide.samples.add", 5)
    }
    assert api.get("/api/jobs/?periodic_task=tick").json()["results"][0]["result"] == 5

    # Changed while beat runs: the next runs use the new arguments.
    assert api.patch(url, {"args": [10, 5]}, format="json").status_code == 200
    wait(runs("tick", 15), timeout=120, what="a run with the new arguments")

    # Paused: once beat has seen a periodic task made after the pause run twice, it has
    # reloaded its schedule, and the paused one has not run since.
    assert api.patch(url, {"enabled": False}, format="json").status_code == 200
    make(api, {"name": "marker", "task": "tide.samples.add", "args": [0, 0],
               "schedule": {"every": 1}})  # fmt: skip
    wait(lambda: len(runs("marker")()) >= 2, timeout=120, what="the marker to run twice")
    paused_at = Job.objects.filter(periodic_task="tick").count()
    wait(lambda: len(runs("marker")()) >= 4, timeout=120, what="the marker to run twice more")
    assert Job.objects.filter(periodic_task="tick").count() == paused_at

    # Resumed, then deleted: the runs come back, then stop for good.
    assert api.patch(url, {"enabled": True}, format="json").status_code == 200
    wait(
        lambda: Job.objects.filter(periodic_task="tick").count() > paused_at,
        timeout=120,
        what="the resumed task to run",
    )
    assert api.delete(url).status_code == 204
    marker = len(runs("marker")())
    wait(lambda: len(runs("marker")()) >= marker + 2, timeout=120, what="two more marker runs")
    gone_at = Job.objects.filter(periodic_task="tick").count()
    wait(lambda: len(runs("marker")()) >= marker + 4, timeout=120, what="two more marker runs")
    assert Job.objects.filter(periodic_task="tick").count() == gone_at
