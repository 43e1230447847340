"""The operator's probe against Tide's own worker, built as the chart's operator pod builds
it: the broker URL and the key prefix (``CELERY_BROKER_KEYPREFIX``), nothing else; Tide's
settings use kombu's default key layout, so that is all it takes to reach the worker. The
probe finds the worker busy while a job runs, and reads what it runs (late acks, prefetch
1, its slots, Tide's integration on Redis).

Marked ``broker``: ``make test`` runs it on Redis and again on RabbitMQ.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tide.jobs.models import Job, JobState
from tide_operator.edge.handlers import busy_probe_from_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.broker]


def test_probe_finds_tides_worker_busy_and_reads_its_settings(
    api: APIClient, celery_worker: Any, job_done: Any, wait: Any
) -> None:
    env = {"CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix")
    if prefix:
        env["CELERY_BROKER_KEYPREFIX"] = prefix
    probe = busy_probe_from_env(env)
    assert probe is not None
    node, nobody = celery_worker.hostname, "worker@nobody-here"

    response = api.post(
        "/api/jobs/", {"task": "tide.samples.io_bound", "args": [3.0]}, format="json"
    )
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    wait(
        lambda: Job.objects.filter(id=job_id, state=JobState.STARTED).exists(),
        timeout=60,
        what="the job to start",
    )
    busy = asyncio.run(probe.busy([node, nobody]))
    assert busy[node] is not None
    assert busy[node] >= 1
    assert busy[nobody] is None

    reports = asyncio.run(probe.reports([node]))
    report = reports[node]
    assert report is not None
    assert (report.acks_late, report.prefetch_multiplier, report.concurrency) == (True, 1, 2)
    # Tide's app installs the integration; it registers workers on Redis only.
    assert report.integration is settings.CELERY_BROKER_URL.startswith("redis")

    job_done(job_id)
    probe.close()
