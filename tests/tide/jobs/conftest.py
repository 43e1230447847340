"""Fixtures for the jobs app: an authenticated API client, and real Celery workers on
the real broker and the test database.

The worker is a real ``celery worker`` process (prefork pool), started once per session
against the test database that pytest-django created; tests that need it commit their
rows (``transaction=True``) so the worker can see them. The broker comes from
``CELERY_BROKER_URL`` (Redis by default; ``make test`` also runs the worker suite on
RabbitMQ), isolated from other runs by the key prefix in ``tide.settings.test``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from private_redis import PrivateRedis
from rest_framework.test import APIClient

from tide.celery import app
from tide.jobs.accounts import ensure_token
from tide.jobs.models import Job

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def user_token(db: Any) -> str:
    return ensure_token("alice")


@pytest.fixture
def api(user_token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {user_token}")
    return client


@pytest.fixture
def other_api(db: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ensure_token('mallory')}")
    return client


class Worker:
    """A running ``celery worker`` process the test can inspect and kill."""

    def __init__(
        self, *, env: dict[str, str], concurrency: int, log: Path, queues: str | None = None
    ) -> None:
        self.hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
        queues = queues or ",".join(dict.fromkeys([*settings.TIDE_QUEUES, "default", "cpu", "io"]))
        self.log = log
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "tide",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "-Q",
                queues,
                "--hostname",
                self.hostname,
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"worker exited early: {self.log.read_text()[-3000:]}")
        replies = app.control.ping(destination=[self.hostname], timeout=0.5)
        return bool(replies)

    def pool_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def celery_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, wait: Any
) -> Iterator[Worker]:
    worker = Worker(
        env=worker_env,
        concurrency=2,
        log=tmp_path_factory.mktemp("worker") / "worker.log",
    )
    # A deadline, not a wait: on a 2-core machine shared with other suites a cold worker
    # (Django, the task modules, the broker) has taken over a minute to come up.
    try:
        wait(worker.ready, timeout=180, what="the Celery worker to answer ping")
        yield worker
    finally:
        # Also when it never answered: a worker left behind would consume the next run's
        # messages.
        worker.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    """``start_worker(env, queues=None, concurrency=2)``: a worker in ``env`` (consuming
    ``queues``, comma-separated, else every queue of Tide's), stopped after the test."""
    started: list[Worker] = []

    def start(env: dict[str, str], queues: str | None = None, concurrency: int = 2) -> Worker:
        log = tmp_path / f"worker{len(started)}.log"
        started.append(Worker(env=env, concurrency=concurrency, log=log, queues=queues))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def job_done(wait: Any) -> Any:
    """``job_done(id)``: wait until the job is final, then return the fresh row."""

    def done(job_id: Any, timeout: float = 60) -> Job:
        def final() -> Job | None:
            job = Job.objects.get(id=job_id)
            return job if job.is_final else None

        return wait(final, timeout=timeout, what=f"job {job_id} to finish")

    return done


@pytest.fixture
def private_redis(tmp_path: Path, wait: Any, broker_at: Any) -> Iterator[PrivateRedis]:
    """A persistent redis-server of the test's own, this process's broker until it ends."""
    server = PrivateRedis(tmp_path)
    server.start(wait)
    broker_at(server.url)
    yield server
    server.stop()
