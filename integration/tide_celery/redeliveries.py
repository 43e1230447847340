"""Notices of messages dead-worker recovery put back, for the app's own records.

When recovery (``tide_celery.recovery``) puts a dead worker's message back in its queue,
the task it carries will run again, but whatever the app recorded of its first run (a
job row saying ``started`` on a worker that no longer exists) does not know it. Recovery
runs outside the app (in Tide's operator, in local mode, in the worker's next run), so it
leaves a notice on the broker, in the same transaction as the restore:
``_tide.redelivered`` (list): JSON ``[task id, node, queue, unix time]``.

The app's workers take the notices and hand them to whoever listens::

    from tide_celery.redeliveries import redelivered

    @redelivered.connect
    def on_redelivered(sender, notices, **kwargs):
        for notice in notices:  # Redelivery(task_id, node, queue, at)
            ...

Every worker of the app (its heartbeat thread, every lease renewal: ``LEASE_INTERVAL``,
2 s) takes up to ``BATCH`` notices at a time in one MULTI/EXEC (``LRANGE`` + ``LTRIM``),
so each notice goes to exactly one worker, and only while a receiver is connected: a
worker without one leaves them for another (the list is capped, ``REDELIVERED_MAX``, and
expires, ``REDELIVERED_TTL``). Receivers run in the heartbeat thread; a receiver that
raises loses that batch's notices (logged): they are a courtesy to the app's records, the
message itself is back in its queue either way.

A notice may arrive after the task started again elsewhere (a worker took the message
before any worker took the notice): ``at`` is when the message was put back, and a
receiver should leave records changed after it alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from celery.utils.dispatch import Signal

from tide_celery.broker import BrokerRedis
from tide_celery.layout import REDELIVERED_KEY

log = logging.getLogger(__name__)

#: Notices taken per round trip.
BATCH = 200

#: Sent by a worker's heartbeat thread with ``notices`` (a list of ``Redelivery``) and the
#: app as ``sender``.
redelivered = Signal(name="tide_redelivered")


@dataclass(frozen=True)
class Redelivery:
    """One message recovery put back: its task, the dead node, its queue and when."""

    task_id: str
    node: str
    queue: str
    #: Unix time the message was put back (the recovering process's clock).
    at: float


def parse(raw: Any) -> Redelivery | None:
    """A notice from ``_tide.redelivered``; ``None`` for anything unreadable."""
    try:
        task_id, node, queue, at = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return Redelivery(task_id=str(task_id), node=str(node), queue=str(queue), at=float(at))
    except (ValueError, TypeError):
        return None


def listening(sender: Any = None) -> bool:
    """Whether a receiver listens (for ``sender``); else the notices stay on the broker."""
    return bool(redelivered.has_listeners(sender))


def take(broker: BrokerRedis, *, batch: int = BATCH) -> list[Redelivery]:
    """Take up to ``batch`` notices off the broker (each goes to one taker only)."""

    def build(pipe: Any, prefix: str) -> None:
        pipe.lrange(prefix + REDELIVERED_KEY, 0, batch - 1)
        pipe.ltrim(prefix + REDELIVERED_KEY, batch, -1)

    replies = broker.run(build, transaction=True)
    if not replies:
        return []
    return [notice for notice in map(parse, replies[0]) if notice is not None]


def deliver(broker: BrokerRedis, sender: Any) -> int:
    """Take the waiting notices and send them to the receivers; how many were sent."""
    if not listening(sender):
        return 0
    sent = 0
    while True:
        notices = take(broker)
        if notices:
            sent += len(notices)
            # Celery's send catches and logs what a receiver raises.
            redelivered.send(sender=sender, notices=notices)
        if len(notices) < BATCH:
            return sent
