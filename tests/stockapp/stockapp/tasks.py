"""The stock app's tasks, declared with ``@shared_task`` as a Django app's are.

* ``place_order`` and ``send_email`` are quick;
* ``send_email`` is also sent with a ``priority`` (kombu's Redis transport puts priority 5 on
  the ``emails\\x06\\x163`` list);
* ``build_report`` is slow: it holds its worker slot until the test releases it;
* ``hold`` is the same on whichever queue it is sent to.

A held task records its id in ``stockapp-control:<run>:running`` (a Redis set) while it runs,
waits for a token on ``stockapp-control:<run>:release`` (a list), and counts itself in
``stockapp-control:<run>:done`` when it ends: the test knows how
many tasks run, and ends them when it wants, without sleeping. The control Redis is
``STOCKAPP_CONTROL_URL`` (default ``redis://127.0.0.1:6379/0``), apart from the broker, so
the same tasks work on RabbitMQ.
"""

import os
import time

import redis
from celery import shared_task

CONTROL_PREFIX = "stockapp-control:"


def control() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("STOCKAPP_CONTROL_URL", "redis://127.0.0.1:6379/0"))


def _hold(run: str, task_id: str) -> str:
    client = control()
    client.sadd(f"{CONTROL_PREFIX}{run}:running", task_id)
    try:
        # A deadline rather than forever: a test that fails before releasing must not
        # leave its workers stuck for good.
        # One-second waits until a token or the deadline: a blocking wait longer than
        # the client's socket timeout (5 s by default in redis-py 8) would fail.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if client.blpop([f"{CONTROL_PREFIX}{run}:release"], timeout=1):
                break
    finally:
        client.srem(f"{CONTROL_PREFIX}{run}:running", task_id)
    client.incr(f"{CONTROL_PREFIX}{run}:done")
    return task_id


@shared_task
def place_order(order_id: int) -> int:
    return order_id


@shared_task
def send_email(to: str) -> str:
    return to


@shared_task(bind=True)
def build_report(self, run: str) -> str:
    return _hold(run, self.request.id)


@shared_task(bind=True)
def hold(self, run: str) -> str:
    return _hold(run, self.request.id)
