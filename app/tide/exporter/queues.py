"""``read_queues``: live queue figures inside any Tide process (the API's ``/api/queues/``).

One reader per process, created on first use from ``tide.celery.app``'s configuration and
kept: on Redis its in-flight cache makes later reads cost only what changed, and a fresh
reader per request would re-read every unacked payload each time. A lock serialises
callers because a reader (its cache, its connection) is not thread-safe; reads take about
a millisecond, so contention is not a concern. A failed read drops the connection and
re-raises: the caller (a view) decides how to answer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from tide.exporter.readers import QueueReader, reader_for
from tide.exporter.stats import QueueStats

_lock = threading.Lock()
_reader: QueueReader | None = None


def _default_reader(app: Any) -> QueueReader:
    return reader_for(
        app.conf.broker_read_url or app.conf.broker_url,
        transport_options=dict(app.conf.broker_transport_options or {}),
        management_url=os.environ.get("TIDE_RABBITMQ_MANAGEMENT_URL") or None,
    )


def read_queues(names: Sequence[str], *, app: Any = None) -> list[QueueStats]:
    """Observations of ``names`` now, in order, from the Celery app's broker.

    ``app`` defaults to ``tide.celery.app``; passing another app gives it its own reader.
    """
    global _reader
    with _lock:
        if app is not None:
            reader = _default_reader(app)
            try:
                return reader.read(list(names), now=time.time())
            finally:
                reader.close()
        if _reader is None:
            from tide.celery import app as tide_app

            _reader = _default_reader(tide_app)
        try:
            return _reader.read(list(names), now=time.time())
        except Exception:
            _reader.close()
            raise
