"""A worker's registration: who it is, what it consumes, and which tasks it runs now.

Why the workers say what runs: under early acks (Celery's default) a running task's message
is acknowledged when the task starts, so it is in neither the queue nor kombu's ``unacked``
hash, and no reading of the broker can see it. An autoscaler that trusts the broker then
scales a pool to zero under running work. So each worker keeps, in the broker's Redis:

* ``_tide.worker.<node>`` (hash): field ``queues`` (the queues it consumes, JSON) and one
  field ``task:<id>`` -> queue per task running now. The pool process that runs a task
  adds its field in ``task_prerun`` and removes it in ``task_postrun``; the key has a TTL;
* ``_tide.workers`` (sorted set): node -> the Unix time its registration expires.

``Heartbeat`` renews both every ``interval`` seconds from a thread of the worker's main
process, which keeps beating while a warm shutdown drains the pool (its tasks still run
and still count) and deregisters after the pool has stopped (``worker_shutdown``).

Staleness: a worker that dies without a word (SIGKILL, node lost) is no longer counted once
its registration expires: at most ``ttl`` seconds (15 by default, three beats) after its
last heartbeat. Readers take only nodes whose expiry lies ahead, and the key's own TTL
removes the data. A pool process that dies in mid-task (OOM, ``kill -9``) never runs its
``task_postrun``; the main process knows which tasks it still holds
(``celery.worker.state``), so each heartbeat removes ``task:`` fields of tasks it no longer
holds: such a phantom lives at most one ``interval``.

The count is exact at every read except for a window of about a millisecond at a task's
start under early acks: the main process acknowledges the message when the pool reports it
accepted, and the pool's ``task_prerun`` write can land just after that, so a read in
between sees the task in neither place.

Readers: ``tide.exporter`` sums the ``task:`` fields per queue, takes their union with the
unacknowledged messages by task id (a late-ack task is in both), and treats a queue that
a registered worker consumes as one served by the integration.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterable

from tide_celery.broker import BrokerRedis
from tide_celery.holdings import Holdings
from tide_celery.layout import QUEUES_FIELD, TASK_FIELD_PREFIX, WORKERS_KEY, worker_key

log = logging.getLogger(__name__)

#: Registrations expired longer ago than this are removed from ``_tide.workers``: readers
#: skip them anyway; removing them keeps the set as small as the live pool.
FORGET_AFTER = 3600.0


def held_task_ids() -> set[str] | None:
    """Ids of the tasks this worker process holds (reserved or running), or ``None``.

    Read from the worker's own state. ``list()`` of a dict is one step under the GIL, so
    this is safe from the heartbeat thread while the main thread adds and removes requests.
    """
    from celery.worker import state

    requests = getattr(state, "requests", None)
    if isinstance(requests, dict):
        return set(requests)
    reserved = getattr(state, "reserved_requests", None)
    if reserved is None:
        return None
    for _ in range(3):
        try:
            return {request.id for request in list(reserved)}
        except RuntimeError:  # changed size during iteration: try again
            continue
    return None


class Heartbeat:
    """Keeps one worker node registered; ``beat`` once at once, then every ``interval``."""

    def __init__(
        self,
        broker: BrokerRedis,
        *,
        node: str,
        queues: Any,
        interval: float,
        ttl: float,
        holdings: Holdings | None = None,
        lease_interval: float | None = None,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.broker = broker
        #: Called after every lease renewal (the worker takes redelivery notices there).
        self.on_tick = on_tick
        #: The worker's lease and delivery record (``tide_celery.holdings``), if kept.
        self.holdings = holdings
        #: Seconds between lease renewals (the thread wakes this often; a full beat runs
        #: every ``interval``).
        self.lease_interval = min(interval, lease_interval or interval)
        self.node = node
        #: A callable giving the names of the queues the worker consumes now.
        self.queues = queues
        self.interval = interval
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, *, now: float | None = None) -> None:
        """Renew the registration, and drop fields of tasks the worker no longer holds."""
        now = time.time() if now is None else now
        key = worker_key(self.node)
        queues = json.dumps(sorted(self.queues()))

        def build(pipe: Any, prefix: str) -> None:
            pipe.zadd(prefix + WORKERS_KEY, {self.node: now + self.ttl})
            pipe.hset(prefix + key, QUEUES_FIELD, queues)
            pipe.expire(prefix + key, max(1, round(self.ttl)))
            pipe.zremrangebyscore(prefix + WORKERS_KEY, "-inf", now - FORGET_AFTER)
            pipe.hkeys(prefix + key)

        replies = self.broker.run(build)
        if replies is None:
            return
        # The fields first, then what the worker holds: a field written after the listing
        # is not looked at, and a task's field is written only while the worker holds it.
        fields = [f.decode() if isinstance(f, bytes) else str(f) for f in replies[-1]]
        held = held_task_ids()
        if held is None:
            return
        phantoms = [
            field
            for field in fields
            if field.startswith(TASK_FIELD_PREFIX) and field[len(TASK_FIELD_PREFIX) :] not in held
        ]
        if phantoms:
            log.info("dropping %d task(s) no longer held by %s", len(phantoms), self.node)
            self.broker.run(lambda pipe, prefix: pipe.hdel(prefix + key, *phantoms))
        if self.holdings is not None:
            self.holdings.prune()
            self.holdings.recover_predecessors()

    def deregister(self) -> None:
        def build(pipe: Any, prefix: str) -> None:
            pipe.zrem(prefix + WORKERS_KEY, self.node)
            pipe.delete(prefix + worker_key(self.node))

        self.broker.run(build)

    def _safe_beat(self) -> None:
        try:
            self.beat()
        except Exception:
            # The broker is away: the worker itself is failing over too. The registration
            # expires if this lasts, which makes readers stop counting this worker.
            log.warning("heartbeat of %s failed", self.node, exc_info=True)

    def _safe_renew(self) -> None:
        if self.holdings is None:
            return
        try:
            self.holdings.renew()
        except Exception:
            # Three failures in a row and the lease lapses: recovery may then put back
            # what this worker holds, if its death is also reported (see recovery).
            log.warning("lease renewal of %s failed", self.node, exc_info=True)

    def _safe_tick(self) -> None:
        if self.on_tick is None:
            return
        try:
            self.on_tick()
        except Exception:
            log.warning("tick of %s failed", self.node, exc_info=True)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(self.lease_interval):
            self._safe_renew()
            self._safe_tick()
            if time.monotonic() >= next_beat - self.lease_interval / 2:
                next_beat = time.monotonic() + self.interval
                self._safe_beat()

    def start(self) -> None:
        """Register now (so the first tasks already count), then beat from a thread."""
        if self.holdings is not None:
            try:
                # The lease before the first message: recovery must see this run alive.
                self.holdings.start()
            except Exception:
                log.warning("could not take the lease of %s", self.node, exc_info=True)
        self._safe_beat()
        self._thread = threading.Thread(target=self._run, name="tide-celery-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, deregister: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        if deregister:
            try:
                self.deregister()
                if self.holdings is not None:
                    self.holdings.release()
            except Exception:
                log.warning("could not deregister %s", self.node, exc_info=True)


def consumed_queues(app: Any) -> Iterable[str]:
    """Names of the queues the worker consumes now (``-Q``, and ``add_consumer`` since)."""
    return list(app.amqp.queues.consume_from or app.amqp.queues)
