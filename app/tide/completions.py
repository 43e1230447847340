"""Per-queue completion counters, kept by the workers in the broker's Redis.

The scaling policy estimates service and arrival rates from a monotonic count of tasks that
left each queue (``Observation.completed_total``, see ``docs/scaling-policy.md``). A Redis
broker forgets a message once it is acknowledged, so the workers keep that count
themselves: after every task a ``task_postrun`` handler adds one to the task's queue in a
hash, ``HINCRBY <global_keyprefix>_tide.completed <queue> 1``, and the exporter reads the
hash with the rest of its round trip (``celery_queue_completed_total``). On RabbitMQ the
broker already counts acknowledgements per queue (the management API's
``message_stats.ack``), so the handler does nothing there.

Why ``task_postrun`` and not ``JobTask``'s hooks: it fires for every task the worker runs,
whether or not it was submitted through the API (chord unlocks, beat's periodic tasks,
plain ``@app.task`` functions), and after every outcome of a run.

Which outcomes count: the policy needs "messages that left the queue system" (its arrival
rate is completions plus the growth of waiting + in flight, by conservation). So a run
counts once when its message is acknowledged or dropped: success, failure, retry (the
original message is acknowledged; the retry is a new message, an arrival of its own),
``Ignore`` (Tide's cancelled jobs), and ``Reject(requeue=False)``. A
``Reject(requeue=True)`` does not count: the message goes back to the queue. Work that
never reaches ``task_postrun`` is not counted either: a revoked or expired message is
discarded without running (it asked for no service, so leaving it out keeps the arrival
rate a rate of *work*), a worker process that dies puts its message back
(``task_reject_on_worker_lost``), and a task killed by its hard time limit is acknowledged
by the parent process, where the task's queue is no longer known (rare, and it only makes
the service-time estimate err long, towards more workers).

The queue is the routing key of the delivery (``request.delivery_info["routing_key"]``,
which Celery fills on Redis and on RabbitMQ alike), mapped through the app's declared
queues when a queue is bound with another routing key, as the exporter maps unacked
entries through the broker's binding tables.

Cost: one ``HINCRBY`` round trip per task over the worker's own broker connection pool
(``app.pool``, kombu's), with the key prefixed from the transport options the worker
already uses (kombu's prefixing client does not know ``HINCRBY``, so the prefix is added
here, as ``tide.exporter.readers`` does). A Redis client wraps each channel's connection
pool once; nothing is opened per task. A failed increment is logged and lost, never raised:
counting must not fail a task whose work is done.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any

import redis
from celery import states
from celery.signals import task_postrun

log = logging.getLogger(__name__)

#: The hash (under the transport's ``global_keyprefix``) holding one counter per queue.
#: The leading underscore keeps it apart from queue names, as kombu's ``_kombu.binding.*``.
COMPLETED_KEY = "_tide.completed"

#: How long a task's end may wait for a free broker connection before the count is dropped.
ACQUIRE_TIMEOUT = 2.0


def leaves_queue(state: str | None, retval: Any) -> bool:
    """Whether a run that ended in ``state`` took its message out of the queue system."""
    if state == states.REJECTED:
        # Reject(requeue=True) puts the message back, where it waits to be counted later.
        return not getattr(retval, "requeue", False)
    return True


def queue_of(
    delivery_info: Mapping[str, Any] | None, routes: Mapping[tuple[str, str], str]
) -> str | None:
    """The queue a message was delivered from, or ``None`` if it never came from a broker."""
    if not delivery_info:
        return None
    routing_key = delivery_info.get("routing_key")
    if not routing_key:
        return None
    exchange = delivery_info.get("exchange") or ""
    return routes.get((exchange, routing_key), routing_key)


def routes_of(app: Any) -> dict[tuple[str, str], str]:
    """(exchange, routing key) -> queue for the queues the app declares."""
    routes: dict[tuple[str, str], str] = {}
    for queue in app.amqp.queues.values():
        exchange = getattr(queue.exchange, "name", "") or ""
        routes.setdefault((exchange, queue.routing_key or queue.name), queue.name)
    return routes


class CompletionCounter:
    """Counts completions for one Celery app; one per app, made on first use."""

    def __init__(self, app: Any) -> None:
        self.app = app
        #: None until the first task tells which transport the app uses.
        self.enabled: bool | None = None
        self.routes = routes_of(app)
        # One plain client per kombu channel pool, so a fork (new pools) gets new clients.
        self._clients: weakref.WeakKeyDictionary[redis.ConnectionPool, redis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def count(self, queue: str) -> None:
        """Add one to ``queue``'s counter in the broker's Redis."""
        with self.app.pool.acquire(block=True, timeout=ACQUIRE_TIMEOUT) as connection:
            if self.enabled is None:
                # Redis and Sentinel transports keep the counter; RabbitMQ counts acks itself.
                self.enabled = connection.transport.driver_type == "redis"
            if not self.enabled:
                return
            channel = connection.default_channel
            pool = channel.pool
            client = self._clients.get(pool)
            if client is None:
                client = self._clients[pool] = redis.Redis(connection_pool=pool)
            client.execute_command("HINCRBY", channel.global_keyprefix + COMPLETED_KEY, queue, 1)


_counters: weakref.WeakKeyDictionary[Any, CompletionCounter] = weakref.WeakKeyDictionary()


def counter_for(app: Any) -> CompletionCounter:
    counter = _counters.get(app)
    if counter is None:
        counter = _counters[app] = CompletionCounter(app)
    return counter


@task_postrun.connect
def count_completion(
    sender: Any = None, task: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """``task_postrun``: count the task's message as gone from its queue."""
    task = task or sender
    request = getattr(task, "request", None)
    # Eager calls (apply(), task_always_eager) never passed through a broker.
    if request is None or request.is_eager or not leaves_queue(state, retval):
        return
    counter = counter_for(task.app)
    if counter.enabled is False:
        return
    queue = queue_of(request.delivery_info, counter.routes)
    if queue is None:
        return
    try:
        counter.count(queue)
    except Exception:
        # The task's work is done and acknowledged regardless; a lost count only slows
        # the rate estimate for one window. Logged, because a broker that refuses the
        # counter is worth knowing about.
        log.warning("could not count a completion on queue %s", queue, exc_info=True)
