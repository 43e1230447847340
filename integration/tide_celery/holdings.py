"""A worker's record of the deliveries it holds, and the lease that fences recovery.

kombu's ``unacked`` hash does not say which worker holds a message, so the worker says it
(``tide_celery.recovery`` reads it when the worker is gone):

* ``_tide.held.<node>`` (hash): delivery tag -> JSON ``[incarnation, task id]``, written by
  the worker's main process when Celery hands it a message (``task_received``: prefetched,
  ETA-held and about-to-run messages alike), one round trip per message;
* ``_tide.lease.<node>.<incarnation>`` (string, TTL ``LEASE_TTL``): renewed every
  ``LEASE_INTERVAL`` seconds by the heartbeat thread; an *incarnation* is one run of the
  worker process (a random id), so a worker restarted in the same pod under the same node
  name is told apart from the run that died.

Entries are not removed on acknowledgement (Celery signals none): every beat drops the
entries of this incarnation whose tag is no longer in ``unacked``. A stale entry is
harmless, because delivery tags are unique per delivery: recovery finds the tag gone and
drops the entry. A message is unrecorded only between kombu writing it to ``unacked`` and
``task_received`` (microseconds), and a worker killed in that gap leaves it to the
transport's visibility timeout, as today.

A new incarnation also recovers its predecessors' holdings (same node name, leases
lapsed): a worker container restarted in its pod after an OOM kill puts back what the
killed run held, without anyone reporting the death.

While the worker lives, every heartbeat also marks the messages it still holds as seen
now in kombu's ``unacked_index`` (``ZADD XX``: a tag acknowledged meanwhile is not added
back). kombu's sweep puts back any unacknowledged message older than the visibility
timeout, even one a live worker holds: an ETA or countdown further ahead than the timeout,
or a late-ack task running longer, would run twice (Celery's documented caveat). Held by a
live worker, a message never looks that old; held by a dead one, it stops being refreshed,
and Tide's recovery (or at the latest kombu's sweep, one visibility timeout after the last
heartbeat) puts it back. The record's TTL is refreshed with it, so it outlives the
worker's last heartbeat by the visibility timeout.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from tide_celery.broker import BrokerRedis
from tide_celery.layout import LEASE_TTL, held_key, lease_key

log = logging.getLogger(__name__)


class Holdings:
    """One incarnation of one worker node: its lease and its record of deliveries."""

    def __init__(
        self,
        broker: BrokerRedis,
        *,
        node: str,
        lease_ttl: float = LEASE_TTL,
        incarnation: str | None = None,
    ) -> None:
        self.broker = broker
        self.node = node
        self.lease_ttl = lease_ttl
        self.incarnation = incarnation or uuid.uuid4().hex[:16]
        #: Whether earlier incarnations of this node left holdings behind (checked at start).
        self.predecessors = False

    @property
    def record(self) -> str:
        return held_key(self.node)

    @property
    def lease(self) -> str:
        return lease_key(self.node, self.incarnation)

    def received(self, *, tag: str, task_id: str) -> None:
        """Record one delivery (the worker's main process, ``task_received``)."""
        value = json.dumps([self.incarnation, task_id])

        def build(pipe: Any, prefix: str) -> None:
            pipe.hset(prefix + self.record, tag, value)
            pipe.expire(prefix + self.record, self.broker.visibility_timeout())

        self.broker.run(build)

    def renew(self) -> None:
        """Keep the lease alive for another ``lease_ttl`` seconds."""
        ttl_ms = max(1, round(self.lease_ttl * 1000))
        self.broker.run(lambda pipe, prefix: pipe.set(prefix + self.lease, "1", px=ttl_ms))

    def start(self) -> None:
        """Take the lease (before the worker consumes) and look for predecessors' holdings."""
        self.renew()
        replies = self.broker.run(lambda pipe, prefix: pipe.hvals(prefix + self.record))
        if replies:
            mine = self.incarnation
            self.predecessors = any(_incarnation(raw) != mine for raw in replies[0])

    def prune(self, *, now: float | None = None) -> int:
        """Drop entries of this incarnation whose message is no longer unacknowledged, and
        mark the ones it still holds as seen ``now`` (see the module's docstring)."""
        replies = self.broker.run(lambda pipe, prefix: pipe.hgetall(prefix + self.record))
        if not replies:
            return 0
        mine = [
            _text(tag) for tag, raw in replies[0].items() if _incarnation(raw) == self.incarnation
        ]
        if not mine:
            return 0
        unacked = self.broker.unacked_key()

        def check(pipe: Any, prefix: str) -> None:
            for tag in mine:
                pipe.hexists(prefix + unacked, tag)

        present = self.broker.run(check) or []
        gone = [tag for tag, there in zip(mine, present, strict=True) if not there]
        held = [tag for tag, there in zip(mine, present, strict=True) if there]
        seen = time.time() if now is None else now
        index = self.broker.unacked_index_key()
        ttl = self.broker.visibility_timeout()

        def update(pipe: Any, prefix: str) -> None:
            if gone:
                pipe.hdel(prefix + self.record, *gone)
            if held:
                pipe.zadd(prefix + index, dict.fromkeys(held, seen), xx=True)
                pipe.expire(prefix + self.record, ttl)

        if gone or held:
            self.broker.run(update)
        return len(gone)

    def recover_predecessors(self) -> None:
        """Put back what earlier runs of this node held, once their leases lapsed."""
        if not self.predecessors:
            return
        from tide_celery.recovery import recover_node

        with self.broker.app.pool.acquire(block=True, timeout=2.0) as connection:
            result = recover_node(connection.default_channel, self.node)
        # This incarnation's own entries are behind its own live lease; anything else
        # still leased belongs to a run that has not lapsed yet: try again next beat.
        mine = self._own_count()
        self.predecessors = result.leased > mine

    def _own_count(self) -> int:
        replies = self.broker.run(lambda pipe, prefix: pipe.hvals(prefix + self.record))
        if not replies:
            return 0
        return sum(1 for raw in replies[0] if _incarnation(raw) == self.incarnation)

    def release(self) -> None:
        """At a clean shutdown: everything was acknowledged or put back by kombu."""

        def build(pipe: Any, prefix: str) -> None:
            pipe.delete(prefix + self.lease)

        self.broker.run(build)
        self.prune()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _incarnation(raw: Any) -> str:
    try:
        return str(json.loads(_text(raw))[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return ""
