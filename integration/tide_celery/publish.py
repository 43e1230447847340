"""The publish stamp: when a message was sent, for the age of the oldest waiting message.

A queue's length says how much waits, not for how long. Every producer stamps the wall
clock (Unix seconds) into the message's ``published_at`` header, which Tide's exporter
reads from the oldest message of each list on Redis. The AMQP ``timestamp`` property
carries it too (whole seconds), because that is what RabbitMQ's management API reports for
the message at the head of a queue. A retry republishes the message and so restamps it:
the age then measures how long the retry has waited, which is what a scaler needs.

Celery's ``before_task_publish`` signal names the task, not the app, so once any app in a
process installs the integration every message that process publishes is stamped: a
header more, nothing else.
"""

from __future__ import annotations

import time
from typing import Any

from tide_celery.layout import PUBLISHED_AT_HEADER


def stamp_published_at(
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """``before_task_publish``: stamp the publish time in the headers and properties."""
    now = time.time()
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = now
    if properties is not None:
        properties.setdefault("timestamp", int(now))
