"""Tide's own workers (``celery -A tide``) keep the per-queue completion counter.

``tide.celery`` turns on Tide's integration (``tide_celery.install``), whose
``task_postrun`` handler counts every task a Tide worker finishes, submitted through the
API or not. On RabbitMQ the broker
counts acknowledgements itself and the handler writes nothing; the exporter's tests check
that path (``tests/tide/exporter/test_exporter_completions.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from tide.celery import app
from tide.exporter import read_queues
from tide_celery.layout import COMPLETED_KEY

# Not marked ``broker``: the counter is the Redis transport's; the RabbitMQ re-run of the
# worker suite has nothing of it to check (the exporter's tests cover RabbitMQ's ack count).
pytestmark = pytest.mark.django_db(transaction=True)

#: A queue the session's worker consumes and no other test of this folder publishes to.
QUEUE = "priority"


def test_every_finished_task_is_counted_once(
    api: APIClient, job_done: Any, celery_worker: Any, wait: Any
) -> None:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    key = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + COMPLETED_KEY

    def counted() -> int:
        return int(client.hget(key, QUEUE) or 0)

    before = counted()
    jobs = []
    for body in (
        {"task": "tide.samples.add", "args": [1, 2]},
        {"task": "tide.samples.add", "args": [3, 4]},
        {"task": "tide.samples.fail", "args": ["counted too"]},
    ):
        response = api.post("/api/jobs/", {**body, "queue": QUEUE}, format="json")
        assert response.status_code == 201, response.content
        jobs.append(response.json()["id"])
    # Not through the API: a plain publish, as another service or beat would do.
    app.send_task("tide.samples.add", args=[5, 6], queue=QUEUE)
    for job_id in jobs:
        job_done(job_id)

    wait(lambda: counted() == before + 4, timeout=60, what="four completions on the queue")

    def drained() -> bool:
        [stats] = read_queues([QUEUE])
        return (stats.waiting, stats.inflight, stats.scheduled) == (0, 0, 0)

    wait(drained, timeout=30, what=f"{QUEUE} drained")
    assert counted() == before + 4
    # What the exporter reads is what the workers wrote.
    assert read_queues([QUEUE])[0].completed == before + 4
