"""Which finished runs count as completions, and which queue a delivery came from.

The scaling policy estimates service and arrival rates from a monotonic count of tasks that
left each queue. A Redis broker forgets a message once it is acknowledged, so the workers
keep that count: after every task, ``HINCRBY <prefix>_tide.completed <queue> 1`` (written
by ``tide_celery.integration`` in the same round trip that drops the task from the running
set). On RabbitMQ the broker counts acknowledgements itself (the management API's
``message_stats.ack``), so nothing is written there.

Why ``task_postrun``: it fires for every task the worker runs, however it was sent
(chord unlocks, beat's periodic tasks, plain ``@app.task`` functions), after every outcome.

Which outcomes count: "messages that left the queue system" (the policy's arrival rate is
completions plus the growth of waiting + in flight, by conservation). So a run counts once
when its message is acknowledged or dropped: success, failure, retry (the original message
is acknowledged; the retry is a new message, an arrival of its own), ``Ignore``, and
``Reject(requeue=False)``. A ``Reject(requeue=True)`` does not count: the message goes back
to the queue. Work that never reaches ``task_postrun`` is not counted either: a revoked or
expired message is discarded without running (it asked for no service), a worker process
that dies puts its message back (``task_reject_on_worker_lost``) or loses it, and a task
killed by its hard time limit is acknowledged by the parent process, where the task's
queue is no longer known (rare, and it only makes the service-time estimate err long).

The queue is the routing key of the delivery (``request.delivery_info["routing_key"]``,
which Celery fills on Redis and RabbitMQ alike), mapped through the app's declared queues
when a queue is bound with another routing key.
"""

from __future__ import annotations

from typing import Any, Mapping

from celery import states


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
    exchange = str(delivery_info.get("exchange") or "")
    return routes.get((exchange, str(routing_key)), str(routing_key))


def routes_of(app: Any) -> dict[tuple[str, str], str]:
    """(exchange, routing key) -> queue for the queues the app declares."""
    routes: dict[tuple[str, str], str] = {}
    for queue in app.amqp.queues.values():
        exchange = getattr(queue.exchange, "name", "") or ""
        routes.setdefault((exchange, queue.routing_key or queue.name), queue.name)
    return routes
