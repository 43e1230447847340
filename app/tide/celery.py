"""The Celery application shared by the API (producer), workers, beat and the exporter.

Configuration comes from Django settings under the ``CELERY_`` namespace (see
``tide.settings.base`` for why each default suits autoscaled workers). One signal handler
lives here because every producer needs it: ``published_at`` is stamped on each message's
headers so the exporter can tell how long the oldest waiting message has waited, which
list length alone cannot.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

import tide.completions  # noqa: F401  (connects task_postrun: per-queue completion counters)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")

app = Celery("tide")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

PUBLISHED_AT_HEADER = "published_at"


@before_task_publish.connect
def stamp_published_at(
    headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None, **_: Any
) -> None:
    """Record the wall-clock publish time (epoch seconds) in the message headers.

    A retry republishes the message, which restamps it: the age then measures how long the
    retry has waited, which is what a scaler needs. The AMQP ``timestamp`` property carries
    it too (whole seconds), because that is what RabbitMQ's management API shows for the
    message at the head of a queue.
    """
    now = time.time()
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = now
    if properties is not None:
        properties.setdefault("timestamp", int(now))
