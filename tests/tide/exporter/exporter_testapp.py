"""A Celery app for the exporter's tests, configured like Tide's but needing no database.

The exporter's figures depend on how a worker takes messages (late acks, prefetch, the
priority lists, ETA handling), not on what tasks do, so this app copies the Celery
settings of ``tide.settings.base`` that shape delivery and adds one task, ``hold``, whose
completion the test controls: it records itself as running in a Redis set and then blocks
until the test pushes a release token. Tests thereby know exactly how many tasks run, how
many are prefetched and how many wait, without sleeping. A second task, ``outcome``, ends
in the way the test asks (success, failure, retry, ignore, requeue), for the completion
counters, which this app's workers keep exactly as Tide's do: every app it makes turns on
Tide's integration (``tide_celery.install``), as ``tide.celery`` does.

A worker subprocess loads the module-level ``app``, configured from the environment:
``EXPORTER_TEST_BROKER_URL``, ``EXPORTER_TEST_KEYPREFIX`` (Redis ``global_keyprefix``),
``EXPORTER_TEST_PREFETCH`` (prefetch multiplier), ``EXPORTER_TEST_CONTROL_URL`` and
``EXPORTER_TEST_CONTROL_PREFIX`` (where the running/release bookkeeping lives).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject

import tide_celery

CONTROL_URL = os.environ.get("EXPORTER_TEST_CONTROL_URL", "redis://127.0.0.1:6379/6")
CONTROL_PREFIX = os.environ.get("EXPORTER_TEST_CONTROL_PREFIX", "exporter-test:")


def control() -> redis.Redis:
    return redis.Redis.from_url(CONTROL_URL)


def make_app(
    *,
    broker_url: str,
    keyprefix: str = "",
    prefetch: int = 1,
    default_priority: int | None = 5,
) -> Celery:
    """A Celery app with Tide's delivery settings and the ``hold`` task."""
    app = Celery("exporter_testapp", broker=broker_url, set_as_current=False)
    # The same layout as tide.settings.base: kombu's defaults (four priority lists).
    transport_options: dict[str, Any] = {"visibility_timeout": 7200}
    if keyprefix:
        transport_options["global_keyprefix"] = keyprefix
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=prefetch,
        task_serializer="json",
        accept_content=["json"],
        task_queue_max_priority=10,
        task_default_priority=default_priority,
        result_backend=None,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    tide_celery.install(app)

    @app.task(name="exporter_test.hold", bind=True, shared=False)
    def hold(self: Any, run: str) -> str:
        """Mark this task running, then block until the test releases one token for ``run``."""
        client = control()
        client.sadd(f"{CONTROL_PREFIX}{run}:running", self.request.id)
        try:
            # A deadline instead of blocking forever: a test that fails before releasing
            # must not leave workers stuck for good.
            # One-second waits until a token or the deadline: a blocking wait longer than
            # the client's socket timeout (5 s by default in redis-py 8) would fail.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if client.blpop([f"{CONTROL_PREFIX}{run}:release"], timeout=1):
                    break
        finally:
            client.srem(f"{CONTROL_PREFIX}{run}:running", self.request.id)
        return str(self.request.id)

    @app.task(name="exporter_test.outcome", bind=True, shared=False)
    def outcome(self: Any, run: str, how: str) -> str:
        """End as ``how`` says: ok, fail, retry (once, then ok), ignore, requeue (once),
        slow (ok after at least 1.1 s)."""
        if how == "slow":
            time.sleep(1.1)  # a known least runtime, for the runtime histogram
        if how == "fail":
            raise ValueError("asked to fail")
        if how == "ignore":
            raise Ignore()
        if how == "retry" and self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=1)
        # The first run rejects back to the queue; the redelivery finishes. The run count
        # lives in the control Redis because a redelivered message carries no memory of it.
        runs_key = f"{CONTROL_PREFIX}{run}:runs:{self.request.id}"
        if how == "requeue" and control().incr(runs_key) == 1:
            raise Reject("asked to requeue", requeue=True)
        return how

    return app


# The app a worker subprocess loads (``celery -A exporter_testapp``), configured from the
# environment the test fixture passes.
app = make_app(
    broker_url=os.environ.get("EXPORTER_TEST_BROKER_URL", "redis://127.0.0.1:6379/6"),
    keyprefix=os.environ.get("EXPORTER_TEST_KEYPREFIX", ""),
    prefetch=int(os.environ.get("EXPORTER_TEST_PREFETCH", "1")),
)
